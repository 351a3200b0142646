"""The local control plane: real etcd + kube-apiserver + kube-controller-manager on loopback."""

from __future__ import annotations

import subprocess
import time
import uuid
from collections.abc import Callable, Iterator

import pytest
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from e2e.controlplane import (
    BUILD_SCRIPT,
    KUBE_VERSION,
    ControlPlane,
    binaries_present,
    expected_bin_dir,
)
from e2e.tools import tool_path

pytestmark = pytest.mark.apiserver


def _wait_until(what: str, check: Callable[[], bool], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(0.5)


def _is_gone(read: Callable[[], object]) -> bool:
    try:
        read()
    except ApiException as error:
        if error.status == 404:
            return True
        raise
    return False


@pytest.fixture(scope="module")
def control_plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlane]:
    # Building takes 10+ minutes, far beyond the test timeout: fail clearly instead of building here.
    if not binaries_present():
        pytest.fail(
            f"control plane binaries are missing from {expected_bin_dir()}; "
            f"build them first: bash {BUILD_SCRIPT}"
        )
    plane = ControlPlane(state_dir=tmp_path_factory.mktemp("controlplane"))
    try:
        plane.start()
        yield plane
    finally:
        plane.stop()


@pytest.fixture(scope="module")
def api(control_plane: ControlPlane) -> Iterator[client.ApiClient]:
    api_client = config.new_client_from_config(config_file=str(control_plane.kubeconfig))
    with api_client:
        yield api_client


@pytest.fixture
def core(api: client.ApiClient) -> client.CoreV1Api:
    return client.CoreV1Api(api)


def _name(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def test_version_is_pinned_release(api: client.ApiClient) -> None:
    assert client.VersionApi(api).get_code().git_version == KUBE_VERSION


def test_kubectl_lists_namespaces(control_plane: ControlPlane) -> None:
    result = subprocess.run(
        [str(tool_path("kubectl")), "--kubeconfig", str(control_plane.kubeconfig), "get", "ns", "-o", "name"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "namespace/default" in result.stdout.split()
    assert "namespace/kube-system" in result.stdout.split()


def test_kubeconfig_context(control_plane: ControlPlane) -> None:
    _contexts, active = config.list_kube_config_contexts(config_file=str(control_plane.kubeconfig))
    assert active["name"] == "bpfleet-local"
    assert control_plane.server_url.startswith("https://127.0.0.1:")


def test_garbage_collector_deletes_dependents(core: client.CoreV1Api) -> None:
    owner = core.create_namespaced_config_map(
        "default", client.V1ConfigMap(metadata=client.V1ObjectMeta(name=_name("owner")))
    )
    reference = client.V1OwnerReference(
        api_version="v1", kind="ConfigMap", name=owner.metadata.name, uid=owner.metadata.uid
    )
    dependent_meta = client.V1ObjectMeta(name=_name("dependent"), owner_references=[reference])
    dependent = core.create_namespaced_config_map("default", client.V1ConfigMap(metadata=dependent_meta))
    # Background propagation: the owner goes at once and the garbage collector removes the dependent.
    core.delete_namespaced_config_map(
        owner.metadata.name, "default", body=client.V1DeleteOptions(propagation_policy="Background")
    )
    _wait_until(
        "the garbage collector to delete the dependent ConfigMap",
        lambda: _is_gone(lambda: core.read_namespaced_config_map(dependent.metadata.name, "default")),
        timeout=30,
    )


def test_namespace_deletion_removes_contents(core: client.CoreV1Api) -> None:
    namespace = _name("doomed")
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=namespace)))
    core.create_namespaced_config_map(namespace, client.V1ConfigMap(metadata=client.V1ObjectMeta(name="cm")))
    core.delete_namespace(namespace)
    # Finishing needs the namespace controller to empty it and drop the "kubernetes" finalizer.
    _wait_until("the namespace to be deleted", lambda: _is_gone(lambda: core.read_namespace(namespace)), 60)


def test_pod_bound_to_node_is_accepted(core: client.CoreV1Api) -> None:
    pod = client.V1Pod(
        metadata=client.V1ObjectMeta(name=_name("bound")),
        spec=client.V1PodSpec(
            node_name="node-a",
            containers=[client.V1Container(name="main", image="registry.k8s.io/pause:3.10")],
        ),
    )
    created = core.create_namespaced_pod("default", pod)
    assert created.spec.node_name == "node-a"
    assert core.read_namespaced_pod(created.metadata.name, "default").spec.node_name == "node-a"
    # No kubelet will ever confirm a graceful deletion, so delete immediately.
    core.delete_namespaced_pod(created.metadata.name, "default", grace_period_seconds=0)


def test_start_twice_reuses_processes(control_plane: ControlPlane) -> None:
    before = control_plane.pids()
    assert set(before) == {"etcd", "kube-apiserver", "kube-controller-manager"}
    control_plane.start()
    assert control_plane.pids() == before
    assert control_plane.is_running()


def test_second_instance_reuses_and_leaves_running(control_plane: ControlPlane) -> None:
    before = control_plane.pids()
    with ControlPlane(state_dir=control_plane.state_dir) as other:
        assert other.pids() == before
        assert other.server_url == control_plane.server_url
    # Leaving the block must not stop a control plane this instance did not start.
    assert control_plane.is_running()
    assert control_plane.pids() == before
