"""Fixtures the API-server tests share (the control plane and `kube` come from the repo's conftest)."""

from __future__ import annotations

from pathlib import Path

import pytest

from e2e.harness import install_crds
from e2e.kube import Kube


@pytest.fixture(scope="module")
def crds(kube: Kube) -> Kube:
    """The control plane with bpfleet's CRDs installed; no operator runs."""
    install_crds(kube.kubeconfig)
    return kube


@pytest.fixture(scope="module")
def helm_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Helm's config, cache and data dirs: the tests never read or write the user's."""
    return tmp_path_factory.mktemp("helm")
