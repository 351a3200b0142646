"""The pod simulator against a real kube-apiserver: API objects and kernel state must agree."""

from __future__ import annotations

import secrets
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import kubernetes.client
import kubernetes.config
import pytest
from kubernetes.client.exceptions import ApiException

from e2e.podsim import (
    PodSimulator,
    cgroup_pids,
    cleanup_cgroup_tree,
    find_cgroup2_mount,
    pod_cgroup_relpath,
    process_cgroup,
)

pytestmark = pytest.mark.apiserver


@pytest.fixture(scope="module")
def api(kube):
    return kube.api


@pytest.fixture
def sim(api):
    base = find_cgroup2_mount() / f"bpfleet-test-{secrets.token_hex(4)}"
    simulator = PodSimulator(api, f"node-{secrets.token_hex(3)}", base / "node")
    try:
        yield simulator
    finally:
        simulator.cleanup()
        cleanup_cgroup_tree(base)  # whatever a failed test left behind


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rpartition(")")[2].split()[0] not in ("Z", "X")


def _condition(conditions, kind):
    return next(c for c in conditions if c.type == kind)


def test_ensure_node_creates_a_ready_node_with_labels(sim):
    core = kubernetes.client.CoreV1Api(sim.api)
    sim.ensure_node({"pool": "a"})
    node = core.read_node(sim.node_name)
    assert node.metadata.labels["pool"] == "a"
    assert node.metadata.labels["kubernetes.io/hostname"] == sim.node_name
    assert _condition(node.status.conditions, "Ready").status == "True"
    coordination = kubernetes.client.CoordinationV1Api(sim.api)
    lease = coordination.read_namespaced_lease(sim.node_name, "kube-node-lease")
    assert lease.spec.holder_identity == sim.node_name
    assert (datetime.now(UTC) - lease.spec.renew_time).total_seconds() < 60

    sim.ensure_node({"zone": "z1"})  # existing node: labels become exactly defaults + the new set
    node = core.read_node(sim.node_name)
    assert node.metadata.labels["zone"] == "z1"
    assert "pool" not in node.metadata.labels
    assert node.metadata.labels["kubernetes.io/hostname"] == sim.node_name
    assert _condition(node.status.conditions, "Ready").status == "True"

    sim.heartbeat()
    sim.delete_node()
    with pytest.raises(ApiException) as gone:
        core.read_node(sim.node_name)
    assert gone.value.status == 404


@pytest.mark.parametrize(
    ("qos", "driver"), [("BestEffort", "systemd"), ("Burstable", "cgroupfs"), ("Guaranteed", "systemd")]
)
def test_pod_lifecycle(api, qos, driver):
    base = find_cgroup2_mount() / f"bpfleet-test-{secrets.token_hex(4)}"
    sim = PodSimulator(api, f"node-{secrets.token_hex(3)}", base / "node", driver)
    try:
        _pod_lifecycle(sim, qos)
    finally:
        sim.cleanup()
        cleanup_cgroup_tree(base)
    assert not base.exists()


def _pod_lifecycle(sim: PodSimulator, qos: str) -> None:
    core = kubernetes.client.CoreV1Api(sim.api)
    namespace = f"podsim-{secrets.token_hex(3)}"
    sim.ensure_node()
    pod = sim.create_pod(namespace, "web", {"app": "web", "tier": "front"}, qos=qos)

    # The API object: bound to our node, Running, with the status kubelet would write.
    obj = core.read_namespaced_pod("web", namespace)
    assert obj.metadata.uid == pod.uid
    assert obj.metadata.labels == {"app": "web", "tier": "front"}
    assert obj.spec.node_name == sim.node_name
    assert obj.spec.containers[0].name == "app"
    assert obj.spec.containers[0].image == "registry.invalid/sim:1"
    assert obj.status.phase == "Running"
    assert obj.status.pod_ip == "127.0.0.1"
    assert obj.status.qos_class == qos
    assert _condition(obj.status.conditions, "Ready").status == "True"
    status = obj.status.container_statuses[0]
    assert (status.name, status.ready, status.container_id) == ("app", True, f"sim://{pod.container_id}")
    assert status.state.running is not None

    # The kernel side: the kubelet layout for this uid, with the process in the container cgroup.
    assert pod.pod_cgroup == sim.cgroup_root / pod_cgroup_relpath(pod.uid, qos, sim.driver)
    assert cgroup_pids(pod.container_cgroup) == [pod.pid]
    assert process_cgroup(pod.pid) == "/" + str(pod.container_cgroup.relative_to(find_cgroup2_mount()))
    assert pod.connect_tcp("127.0.0.1", 1) != 0  # runs in the pod; nothing listens on port 1

    sim.set_labels(pod, {"app": "db"})
    assert core.read_namespaced_pod("web", namespace).metadata.labels == {"app": "db"}
    assert pod.labels == {"app": "db"}

    sim.delete_pod(pod)
    with pytest.raises(ApiException) as gone:
        core.read_namespaced_pod("web", namespace)
    assert gone.value.status == 404
    assert not _alive(pod.pid)
    assert not pod.container_cgroup.exists()
    assert not pod.pod_cgroup.exists()
    assert sim.pods == []


def test_cleanup_deletes_pods_and_node_and_cgroups(sim):
    core = kubernetes.client.CoreV1Api(sim.api)
    sim.ensure_node()
    pods = [sim.create_pod("podsim-cleanup", f"p{i}", {"i": str(i)}) for i in range(3)]
    listed = core.list_namespaced_pod("podsim-cleanup", field_selector=f"spec.nodeName={sim.node_name}")
    assert {p.metadata.name for p in listed.items} == {"p0", "p1", "p2"}

    sim.cleanup()

    on_node = f"spec.nodeName={sim.node_name}"
    assert core.list_namespaced_pod("podsim-cleanup", field_selector=on_node).items == []
    with pytest.raises(ApiException):
        core.read_node(sim.node_name)
    assert not any(_alive(p.pid) for p in pods)
    assert not sim.cgroup_root.exists()
    assert not sim.cgroup_root.parent.exists()
    sim.cleanup()  # second call is a no-op


def test_heartbeat_thread_renews_the_lease_until_cleanup(sim):
    coordination = kubernetes.client.CoordinationV1Api(sim.api)
    sim.ensure_node()
    first = coordination.read_namespaced_lease(sim.node_name, "kube-node-lease").spec.renew_time
    sim.start_heartbeat(interval=0.1)
    deadline = time.monotonic() + 10
    while coordination.read_namespaced_lease(sim.node_name, "kube-node-lease").spec.renew_time == first:
        assert time.monotonic() < deadline, "lease was not renewed"
        time.sleep(0.05)
    sim.cleanup()
    assert not any(t.name.startswith("podsim-heartbeat") for t in threading.enumerate())
