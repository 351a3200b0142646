"""Fixtures shared by the API-server and end-to-end tiers: a real control plane per tier."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from e2e.controlplane import ControlPlane, running_control_plane
from e2e.kube import Kube


@pytest.fixture(scope="session")
def control_plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlane]:
    with running_control_plane(tmp_path_factory.mktemp("controlplane")) as plane:
        yield plane


@pytest.fixture(scope="session")
def kube(control_plane: ControlPlane) -> Kube:
    return Kube(control_plane.kubeconfig)
