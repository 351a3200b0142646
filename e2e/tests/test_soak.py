"""The soak (e2e/soak.py), short: BPFLEET_SOAK_CI_MINUTES (5 by default) of pod churn and program
updates on two nodes; pins, links and maps may not grow, nor the agents' RSS and fds beyond the
soak's stated bounds. `make soak` runs it for an hour."""

from __future__ import annotations

import os

import pytest

from e2e.kube import Kube
from e2e.soak import Soak

pytestmark = pytest.mark.e2e

MINUTES = float(os.environ.get("BPFLEET_SOAK_CI_MINUTES", "5"))


# The soak's own minutes, plus setting up, converging and the final update (each bounded by its wait).
@pytest.mark.timeout(int(MINUTES * 60) + 420)
def test_a_short_soak_grows_nothing(kube: Kube, node_a, node_b, namespace: str):
    breaches = Soak(kube, [node_a, node_b], namespace).run(MINUTES, pods_per_minute=30, update_seconds=30)
    assert breaches == []
