"""The chart's RBAC for its own components, asked of the API server with `kubectl auth can-i`: what
each must be granted and what each must be refused, the table of docs/install.md. That it is enough
is proved in test_chart.py, which runs the real operator and agent with these accounts' tokens."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from e2e.kube import Kube
from tests.apiserver.chart import Release, can_i, can_i_params, installed_release, scratch_namespace

pytestmark = pytest.mark.apiserver


@pytest.fixture(scope="module")
def release(crds: Kube, helm_home: Path) -> Iterator[Release]:
    with scratch_namespace(crds, "chart") as name, installed_release(crds, name, helm_home) as installed:
        yield installed


# (component, what it asks, granted?): the table of docs/install.md, and a few things it must not do.
CAN_I = [
    ("operator", "get ebpfprograms.bpfleet.io -n x", True),
    ("operator", "patch ebpfprograms.bpfleet.io -n x", True),
    ("operator", "patch ebpfprograms.bpfleet.io --subresource=status -n x", True),
    ("operator", "create ebpfprogramversions.bpfleet.io -n x", True),
    ("operator", "delete ebpfprogramversions.bpfleet.io -n x", True),
    ("operator", "patch ebpfprogramversions.bpfleet.io -n x", False),
    ("operator", "create ebpfprogramplacements.bpfleet.io -n x", True),
    ("operator", "patch ebpfprogramplacements.bpfleet.io -n x", True),
    ("operator", "delete ebpfprogramplacements.bpfleet.io -n x", True),
    ("operator", "watch ebpfprogramplacements.bpfleet.io -A", True),
    ("operator", "create ebpfnodestates.bpfleet.io", True),
    ("operator", "patch ebpfnodestates.bpfleet.io", True),
    ("operator", "watch ebpfnodestates.bpfleet.io", True),
    ("operator", "create events -n x", True),
    ("operator", "get configmaps -n x", True),
    ("operator", "watch customresourcedefinitions.apiextensions.k8s.io", True),
    ("operator", "get secrets -n x", False),
    ("operator", "create ebpfprograms.bpfleet.io -n x", False),
    ("operator", "delete ebpfprograms.bpfleet.io -n x", False),
    ("operator", "patch ebpfnodestates.bpfleet.io --subresource=status", False),
    ("operator", "delete ebpfnodestates.bpfleet.io", False),
    ("operator", "patch nodes", False),
    ("operator", "patch configmaps -n x", False),
    ("operator", "watch clusterebpfprograms.bpfleet.io", True),
    ("operator", "patch clusterebpfprograms.bpfleet.io", True),
    ("operator", "patch clusterebpfprograms.bpfleet.io --subresource=status", True),
    ("operator", "create clusterebpfprograms.bpfleet.io", False),
    ("operator", "delete clusterebpfprograms.bpfleet.io", False),
    ("operator", "get namespaces", True),
    ("operator", "watch namespaces", True),
    ("operator", "patch namespaces", False),
    ("operator", "create events -n default", True),
    ("operator", "watch bpfleetnodes.bpfleet.io", True),
    ("operator", "patch bpfleetnodes.bpfleet.io", False),
    ("agent", "watch ebpfnodestates.bpfleet.io", True),
    ("agent", "patch ebpfnodestates.bpfleet.io --subresource=status", True),
    ("agent", "update ebpfnodestates.bpfleet.io --subresource=status", True),
    ("agent", "get ebpfprogramversions.bpfleet.io -n x", True),
    ("agent", "create bpfleetnodes.bpfleet.io", True),
    ("agent", "patch bpfleetnodes.bpfleet.io --subresource=status", True),
    ("agent", "watch pods -A", True),
    ("agent", "patch ebpfnodestates.bpfleet.io", False),
    ("agent", "create ebpfnodestates.bpfleet.io", False),
    ("agent", "delete ebpfnodestates.bpfleet.io", False),
    ("agent", "list ebpfprogramversions.bpfleet.io -n x", False),
    ("agent", "create ebpfprogramversions.bpfleet.io -n x", False),
    ("agent", "patch ebpfprograms.bpfleet.io -n x", False),
    ("agent", "patch bpfleetnodes.bpfleet.io", False),
    ("agent", "get configmaps -n x", False),
    ("agent", "get secrets -n x", False),
    ("agent", "patch pods -n x", False),
    ("agent", "watch nodes", True),
    ("agent", "watch ebpfprogramplacements.bpfleet.io -A", True),
    ("agent", "create ebpfprogramplacements.bpfleet.io -n x", False),
    ("agent", "patch ebpfprogramplacements.bpfleet.io -n x", False),
    ("agent", "patch nodes", False),
    ("agent", "patch clusterebpfprograms.bpfleet.io", False),
    ("agent", "list namespaces", False),
]


@pytest.mark.parametrize(("component", "ask", "allowed"), can_i_params(CAN_I))
def test_rbac_grants_only_the_table(kube: Kube, release: Release, component: str, ask: str, allowed: bool):
    account = release.operator if component == "operator" else release.agent
    user = f"system:serviceaccount:{release.namespace}:{account}"
    assert can_i(kube, user, *ask.split()) is allowed
