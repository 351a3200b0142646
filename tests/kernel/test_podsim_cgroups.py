"""The kernel half of the pod simulator on the real cgroup v2 hierarchy: cgroups, processes, cleanup.

The Kubernetes API is replaced by a small in-memory fake; tests/apiserver covers the real one.
"""

from __future__ import annotations

import errno
import os
import secrets
import socket
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path
from types import SimpleNamespace

import kubernetes.client
import pytest
from kubernetes.client.exceptions import ApiException

from e2e.podsim import (
    PodSimulator,
    cgroup_pids,
    cleanup_cgroup_tree,
    container_cgroup_relpath,
    find_cgroup2_mount,
    pod_cgroup_relpath,
    process_cgroup,
    spawn_in_cgroup,
)

pytestmark = pytest.mark.kernel


class FakeCore:
    """The few CoreV1Api calls PodSimulator makes for pods, answered from memory."""

    def __init__(self):
        self.pods: dict[tuple[str, str], dict] = {}
        self.namespaces: set[str] = set()

    def create_namespace(self, body, **_):
        if body.metadata.name in self.namespaces:
            raise ApiException(status=409)
        self.namespaces.add(body.metadata.name)

    def create_namespaced_service_account(self, namespace, body, **_):
        pass

    def create_namespaced_pod(self, namespace, body, **_):
        uid = str(uuid.uuid4())
        self.pods[(namespace, body.metadata.name)] = {"uid": uid, "labels": body.metadata.labels}
        return SimpleNamespace(metadata=SimpleNamespace(uid=uid))

    def patch_namespaced_pod_status(self, name, namespace, body, **_):
        self.pods[(namespace, name)]["status"] = body["status"]

    def delete_namespaced_pod(self, name, namespace, **_):
        if self.pods.pop((namespace, name), None) is None:
            raise ApiException(status=404)


def _alive(pid: int) -> bool:
    """True for a live process; a zombie or a vanished pid counts as dead."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rpartition(")")[2].split()[0] not in ("Z", "X")


def _relative_to_mount(path: Path) -> str:
    return "/" + str(path.relative_to(find_cgroup2_mount()))


@pytest.fixture
def scratch_cgroup():
    """A path for a throwaway cgroup tree directly under the v2 mount; whatever is left is removed."""
    root = find_cgroup2_mount() / f"bpfleet-test-{secrets.token_hex(4)}"
    try:
        yield root
    finally:
        cleanup_cgroup_tree(root)
        assert not root.exists()


@pytest.fixture
def make_sim(scratch_cgroup):
    sims: list[PodSimulator] = []

    def make(driver="systemd", root=None):
        sim = PodSimulator(kubernetes.client.ApiClient(), "node-k", root or scratch_cgroup / "node-k", driver)
        sim.core = FakeCore()
        sims.append(sim)
        return sim

    yield make
    for sim in sims:
        sim.cleanup()


def test_simulator_creates_its_root_and_parents(make_sim, scratch_cgroup):
    sim = make_sim()
    assert (sim.cgroup_root / "cgroup.procs").is_file()
    assert scratch_cgroup.is_dir()


def test_rejects_a_root_outside_cgroup2(tmp_path):
    with pytest.raises(ValueError, match="not inside a cgroup v2"):
        PodSimulator(kubernetes.client.ApiClient(), "node-k", tmp_path / "a" / "b")
    assert not (tmp_path / "a").exists()


@pytest.mark.parametrize("driver", ["systemd", "cgroupfs"])
@pytest.mark.parametrize("qos", ["BestEffort", "Burstable", "Guaranteed"])
def test_create_pod_builds_kubelet_layout_with_a_live_process(make_sim, driver, qos):
    sim = make_sim(driver)
    pod = sim.create_pod("ns1", "web", {"app": "web"}, qos=qos)

    assert pod.pod_cgroup == sim.cgroup_root / pod_cgroup_relpath(pod.uid, qos, driver)
    assert pod.container_cgroup == sim.cgroup_root / container_cgroup_relpath(
        pod.uid, qos, driver, pod.container_id
    )
    assert pod.container_cgroup.is_dir()
    assert _alive(pod.pid)
    assert process_cgroup(pod.pid) == _relative_to_mount(pod.container_cgroup)
    assert cgroup_pids(pod.container_cgroup) == [pod.pid]
    assert cgroup_pids(pod.pod_cgroup) == []  # processes only in the leaf, as with a real runtime
    status = sim.core.pods[("ns1", "web")]["status"]
    assert status["phase"] == "Running"
    assert status["qosClass"] == qos
    assert status["containerStatuses"][0]["containerID"] == f"sim://{pod.container_id}"


def test_process_is_in_the_cgroup_before_exec(make_sim):
    pod = make_sim().create_pod("ns1", "web", {})
    # The exec'd program reads its own membership: it can only see the pod's cgroup if it never ran
    # anywhere else.
    result = pod.run(["cat", "/proc/self/cgroup"], timeout=10)
    assert result.returncode == 0
    assert f"0::{_relative_to_mount(pod.container_cgroup)}" in result.stdout.splitlines()


def test_run_reports_exit_status_and_output(make_sim):
    pod = make_sim().create_pod("ns1", "web", {})
    result = pod.run(["sh", "-c", "echo out; echo err >&2; exit 3"], timeout=10)
    assert (result.returncode, result.stdout, result.stderr) == (3, "out\n", "err\n")


def test_connect_tcp_and_send_udp_from_the_pod(make_sim):
    pod = make_sim().create_pod("ns1", "web", {})
    with socket.socket() as listener, socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as receiver:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        receiver.bind(("127.0.0.1", 0))
        port = listener.getsockname()[1]
        assert pod.connect_tcp("127.0.0.1", port) == 0
        listener.close()  # nothing listens on the port any more
        assert pod.connect_tcp("127.0.0.1", port) == errno.ECONNREFUSED

        result = pod.send_udp("127.0.0.1", receiver.getsockname()[1], count=5, size=32)
        assert result.sent == 5
        assert result.errors == {}
        receiver.settimeout(5)
        assert [len(receiver.recv(100)) for _ in range(5)] == [32] * 5


def test_delete_pod_kills_process_and_removes_its_cgroups(make_sim):
    sim = make_sim()
    pod = sim.create_pod("ns1", "web", {})
    other = sim.create_pod("ns1", "db", {})
    # A leftover the pod left behind, detached from the pipes run() waits on.
    stray = pod.run(["sh", "-c", "sleep 300 >/dev/null 2>&1 & echo $!"], timeout=10)
    stray_pid = int(stray.stdout)
    assert _alive(stray_pid)

    sim.delete_pod(pod)

    assert not _alive(pod.pid)
    assert not _alive(stray_pid)
    assert not pod.container_cgroup.exists()
    assert not pod.pod_cgroup.exists()
    assert ("ns1", "web") not in sim.core.pods
    assert pod not in sim.pods
    assert _alive(other.pid)  # the QoS parent stays, as kubelet keeps it
    assert pod.pod_cgroup.parent.is_dir()
    with pytest.raises(RuntimeError, match="does not exist"):
        pod.run(["true"], timeout=5)


def test_cleanup_removes_everything_it_created_and_is_repeatable(make_sim, scratch_cgroup):
    sim = make_sim("cgroupfs")
    pods = [sim.create_pod("ns1", f"p{i}", {}, qos=q) for i, q in enumerate(["BestEffort", "Guaranteed"])]

    sim.cleanup()

    assert not any(_alive(pod.pid) for pod in pods)
    assert not scratch_cgroup.exists()  # root and the parent the simulator created
    assert sim.core.pods == {}
    assert sim.pods == []
    sim.cleanup()


def test_cleanup_leaves_a_preexisting_root(make_sim, scratch_cgroup):
    scratch_cgroup.mkdir()
    sim = make_sim(root=scratch_cgroup)
    pod = sim.create_pod("ns1", "web", {})
    sim.cleanup()
    assert not _alive(pod.pid)
    assert scratch_cgroup.is_dir()
    assert sorted(p.name for p in scratch_cgroup.iterdir() if p.is_dir()) == []


def test_cleanup_cgroup_tree_kills_and_removes_leftovers(scratch_cgroup):
    leaves = [scratch_cgroup / "a" / "b" / "c", scratch_cgroup / "a" / "d", scratch_cgroup / "e"]
    for leaf in leaves:
        leaf.mkdir(parents=True)
    procs = [spawn_in_cgroup(["sleep", "300"], leaf) for leaf in leaves]
    for proc, leaf in zip(procs, leaves, strict=True):
        assert process_cgroup(proc.pid) == _relative_to_mount(leaf)

    assert cleanup_cgroup_tree(scratch_cgroup) is True

    assert [p.wait(timeout=5) for p in procs] == [-9, -9, -9]
    assert not scratch_cgroup.exists()
    assert cleanup_cgroup_tree(scratch_cgroup) is True  # nothing there: fine


def test_cleanup_cgroup_tree_refuses_the_callers_own_tree(scratch_cgroup):
    leaf = scratch_cgroup / "self"
    leaf.mkdir(parents=True)
    # A python child inside the tree tries to clean it: the guard must stop it before cgroup.kill.
    script = textwrap.dedent(f"""
        from pathlib import Path
        from e2e.podsim import cleanup_cgroup_tree
        try:
            cleanup_cgroup_tree(Path({str(scratch_cgroup)!r}))
        except RuntimeError as exc:
            print("refused:", exc)
    """)
    result = subprocess.run(
        [sys.executable, "-c", script],
        preexec_fn=lambda: Path(leaf, "cgroup.procs").write_text("0"),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=Path(__file__).parents[2],
        env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[2])},
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("refused:")
    assert leaf.is_dir()


def test_cleanup_cgroup_tree_rejects_non_cgroup_dirs(tmp_path):
    with pytest.raises(ValueError, match="not a cgroup v2 directory"):
        cleanup_cgroup_tree(tmp_path)
