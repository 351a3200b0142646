"""The chart's RBAC for its own components, asked of the API server with `kubectl auth can-i`: what
each must be granted and what each must be refused, the table of docs/install.md. That it is enough
is proved in test_chart.py, which runs the real operator and agent with these accounts' tokens."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from e2e.harness import install_crds
from e2e.kube import Kube
from tests.apiserver.chart import Release, installed_release, scratch_namespace

pytestmark = pytest.mark.apiserver


@pytest.fixture(scope="module")
def release(kube: Kube, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Release]:
    install_crds(kube.kubeconfig)
    home = tmp_path_factory.mktemp("helm")
    with scratch_namespace(kube, "chart") as name, installed_release(kube, name, home) as installed:
        yield installed


def can_i(kube: Kube, release: Release, account: str, *args: str) -> bool:
    user = f"system:serviceaccount:{release.namespace}:{account}"
    return kube.kubectl("auth", "can-i", *args, "--as", user, check=False).strip() == "yes"


# (component, what it asks, granted?): the table of docs/install.md, and a few things it must not do.
CAN_I = [
    ("operator", "get ebpfprograms.bpfleet.io -n x", True),
    ("operator", "patch ebpfprograms.bpfleet.io -n x", True),
    ("operator", "patch ebpfprograms.bpfleet.io --subresource=status -n x", True),
    ("operator", "delete ebpfnodeprograms.bpfleet.io -n x", True),
    ("operator", "create events -n x", True),
    ("operator", "get configmaps -n x", True),
    ("operator", "watch customresourcedefinitions.apiextensions.k8s.io", True),
    ("operator", "get secrets -n x", False),
    ("operator", "create ebpfprograms.bpfleet.io -n x", False),
    ("operator", "delete ebpfprograms.bpfleet.io -n x", False),
    ("operator", "patch ebpfnodeprograms.bpfleet.io --subresource=status -n x", False),
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
    ("agent", "watch ebpfnodeprograms.bpfleet.io -A", True),
    ("agent", "patch ebpfnodeprograms.bpfleet.io -n x", True),
    ("agent", "patch ebpfnodeprograms.bpfleet.io --subresource=status -n x", True),
    ("agent", "create bpfleetnodes.bpfleet.io", True),
    ("agent", "patch bpfleetnodes.bpfleet.io --subresource=status", True),
    ("agent", "watch pods -A", True),
    ("agent", "create ebpfnodeprograms.bpfleet.io -n x", False),
    ("agent", "delete ebpfnodeprograms.bpfleet.io -n x", False),
    ("agent", "patch ebpfprograms.bpfleet.io -n x", False),
    ("agent", "patch bpfleetnodes.bpfleet.io", False),
    ("agent", "get configmaps -n x", False),
    ("agent", "get secrets -n x", False),
    ("agent", "patch pods -n x", False),
    ("agent", "list nodes", False),
    ("agent", "patch clusterebpfprograms.bpfleet.io", False),
    ("agent", "list namespaces", False),
]


@pytest.mark.parametrize(
    ("component", "ask", "allowed"),
    [pytest.param(*row, id=f"{row[0]} {row[1]}: {'yes' if row[2] else 'no'}") for row in CAN_I],
)
def test_rbac_grants_only_the_table(kube: Kube, release: Release, component: str, ask: str, allowed: bool):
    account = release.operator if component == "operator" else release.agent
    assert can_i(kube, release, account, *ask.split()) is allowed
