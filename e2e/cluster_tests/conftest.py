"""bpfleet on a real cluster: real nodes, kubelet, container runtime and pod network.

Any cluster where bpfleet is already installed (the operator Deployment and the agent DaemonSet of
charts/bpfleet): the real node of `make cluster-up`, or the kind cluster of `make kind-up`. Its
kubeconfig comes from BPFLEET_CLUSTER_KUBECONFIG. Not among pyproject's default test paths: `make
test` runs it on the real node through e2e/tests/test_real_node.py; `make cluster-test`, `make
kind-test` or `pytest e2e/cluster_tests` run it directly.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import kubernetes
import pytest

from e2e.harness import wait_for
from e2e.kube import Kube, scratch_namespace
from e2e.tools import ToolNotInstalledError, tool_path

KUBECONFIG_ENV = "BPFLEET_CLUSTER_KUBECONFIG"
# Where the chart was installed; kind-up.sh and docs/install.md use bpfleet-system.
INSTALL_NAMESPACE = os.environ.get("BPFLEET_CLUSTER_NAMESPACE", "bpfleet-system")
CHART_LABELS = "app.kubernetes.io/name=bpfleet"


@pytest.fixture(scope="session")
def kubeconfig() -> Path:
    value = os.environ.get(KUBECONFIG_ENV)
    if not value:
        pytest.fail(
            f"{KUBECONFIG_ENV} is not set. These tests run against a real cluster where bpfleet is "
            f"installed: set it to that cluster's kubeconfig, or run `make kind-test`, which creates "
            f"a kind cluster, installs bpfleet and sets it.",
            pytrace=False,
        )
    path = Path(value)
    if not path.is_file():
        pytest.fail(f"{KUBECONFIG_ENV}={value}: no such file", pytrace=False)
    return path


@pytest.fixture(scope="session")
def _kubectl() -> Iterator[None]:
    """Kube runs the kubectl of bpfleet's cache (e2e/tools.py); a cluster host may only have one on
    PATH, so it is offered there through a cache of this session's own."""
    try:
        tool_path("kubectl")
    except ToolNotInstalledError:
        found = shutil.which("kubectl")
        if found is None:
            pytest.fail("kubectl is neither in bpfleet's cache nor on PATH", pytrace=False)
        with tempfile.TemporaryDirectory() as cache, pytest.MonkeyPatch.context() as patch:
            (Path(cache) / "bin").mkdir()
            (Path(cache) / "bin" / "kubectl").symlink_to(found)
            patch.setenv("BPFLEET_CACHE", cache)
            yield
    else:
        yield


def _installed(kube: Kube) -> bool:
    apps = kubernetes.client.AppsV1Api(kube.api)
    [operator] = apps.list_namespaced_deployment(
        INSTALL_NAMESPACE, label_selector=f"{CHART_LABELS},app.kubernetes.io/component=operator"
    ).items
    [agent] = apps.list_namespaced_daemon_set(
        INSTALL_NAMESPACE, label_selector=f"{CHART_LABELS},app.kubernetes.io/component=agent"
    ).items
    agents_ready = agent.status.desired_number_scheduled == agent.status.number_ready > 0
    return bool((operator.status.ready_replicas or 0) >= 1 and agents_ready)


@pytest.fixture(scope="session")
def kube(kubeconfig: Path, _kubectl: None) -> Kube:
    kube = Kube(kubeconfig)
    try:
        wait_for("bpfleet ready", lambda: _installed(kube), timeout=60, interval=2)
    except TimeoutError as e:
        pytest.fail(
            f"bpfleet is not installed and ready in namespace {INSTALL_NAMESPACE} of the cluster of "
            f"{kubeconfig}: one operator Deployment with a ready replica and one agent DaemonSet "
            f"ready on every node are expected (charts/bpfleet, docs/install.md). {e}",
            pytrace=False,
        )
    return kube


@pytest.fixture(scope="session")
def agent_metrics(kube: Kube) -> dict[str, str]:
    """node name -> its agent's /metrics, as a path for `kubectl get --raw` (the API server's pod
    proxy: nothing to port-forward, and agents on the host network need no Service)."""
    found = {}
    for pod in kube.core.list_namespaced_pod(
        INSTALL_NAMESPACE, label_selector=f"{CHART_LABELS},app.kubernetes.io/component=agent"
    ).items:
        [port] = [p.container_port for c in pod.spec.containers for p in c.ports or [] if p.name == "metrics"]
        found[pod.spec.node_name] = (
            f"/api/v1/namespaces/{INSTALL_NAMESPACE}/pods/{pod.metadata.name}:{port}/proxy/metrics"
        )
    return found


@pytest.fixture
def namespace(kube: Kube) -> Iterator[str]:
    """A namespace per test; its programs are deleted while the agents can still detach them."""
    # Real pods go with their namespace; a real cluster deletes programs more slowly.
    with scratch_namespace(kube, "bpfleet-t", timeout=120) as name:
        yield name
