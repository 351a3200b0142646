"""The fast path on the real kernel: inotify on a kubelet cgroup tree (both drivers) and attaching the
moment a pod's cgroup appears, with no pass in between; Tc once the pod has a process in its
network namespace."""

from __future__ import annotations

import dataclasses
import os
import secrets
import subprocess
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from e2e import podnet
from e2e.podsim import (
    cleanup_cgroup_tree,
    container_cgroup_name,
    find_cgroup2_mount,
    new_container_id,
    pod_cgroup_relpath,
    run_in_cgroup,
    spawn_in_cgroup,
)
from node_agent.cgroup_watch import CgroupListener, CgroupWatch
from node_agent.cgroups import PodCgroupResolver
from node_agent.fast_path import FastPath
from node_agent.fast_wiring import fast_path_for
from node_agent.kernel.bpffs import BpffsBackend
from node_agent.model import Pod
from node_agent.reconcile import Reconciler
from node_agent.serialized_backend import SerializedBackend
from tests.kernel.support import COUNTER, bpftool, wait_until
from tests.unit.builders import node_program, parsed

pytestmark = pytest.mark.kernel

TC_SOURCE = "int pass(struct __sk_buff *skb) { return 0; }"  # TC_ACT_OK


class Recorder:
    """A CgroupListener that writes down what it heard."""

    def __init__(self) -> None:
        self.events: list[tuple[str, ...]] = []
        self.changed = threading.Condition()

    def listener(self) -> CgroupListener:
        return CgroupListener(
            lambda uid, path: self._add("pod", uid, str(path)),
            lambda uid, cid, path: self._add("container", uid, cid, str(path)),
            lambda uid, path: self._add("populated", uid),
        )

    def _add(self, *event: str) -> None:
        with self.changed:
            self.events.append(event)
            self.changed.notify_all()

    def wait_for(self, event: tuple[str, ...], timeout: float = 5.0) -> None:
        with self.changed:
            if not self.changed.wait_for(lambda: event in self.events, timeout):
                pytest.fail(f"no {event} in {self.events}")


@pytest.fixture
def kubelet_root() -> Iterator[Path]:
    root = find_cgroup2_mount() / f"bpfleet-test-{secrets.token_hex(4)}"
    root.mkdir()
    try:
        yield root
    finally:
        cleanup_cgroup_tree(root)
        assert not root.exists(), f"could not remove {root}"


@pytest.fixture
def watch_of(kubelet_root: Path) -> Iterator[Any]:
    watches: list[CgroupWatch] = []

    def start(listener: CgroupListener) -> CgroupWatch:
        watch = CgroupWatch(kubelet_root, listener)
        watch.start()
        watches.append(watch)
        return watch

    try:
        yield start
    finally:
        for watch in watches:
            watch.stop()


@pytest.mark.parametrize("driver", ["systemd", "cgroupfs"])
@pytest.mark.parametrize("qos", ["Guaranteed", "Burstable", "BestEffort"])
def test_the_watch_reports_pods_and_containers_kubelet_makes(kubelet_root, watch_of, driver, qos):
    recorder = Recorder()
    watch_of(recorder.listener())  # before kubepods exists: kubelet makes it later
    uid, cid = str(uuid.uuid4()), new_container_id()
    pod = kubelet_root / pod_cgroup_relpath(uid, qos, driver)
    container = pod / container_cgroup_name(cid, driver)
    container.mkdir(parents=True)  # parents and children at once: nothing made before a watch is lost
    recorder.wait_for(("pod", uid, str(pod)))
    recorder.wait_for(("container", uid, cid, str(container)))
    sleeper = spawn_in_cgroup(["sleep", "30"], container)
    try:
        recorder.wait_for(("populated", uid))
    finally:
        sleeper.kill()
        sleeper.wait()


def test_pods_made_before_the_watch_started_are_reported_from_the_listing(kubelet_root, watch_of):
    uid = str(uuid.uuid4())
    pod = kubelet_root / pod_cgroup_relpath(uid, "Burstable", "cgroupfs")
    pod.mkdir(parents=True)
    (kubelet_root / "system.slice" / "pod-lookalike").mkdir(parents=True)
    recorder = Recorder()
    watch = watch_of(recorder.listener())
    recorder.wait_for(("pod", uid, str(pod)))
    assert [e for e in recorder.events if e[0] == "pod"] == [("pod", uid, str(pod))]
    assert Path("system.slice") not in watch.watched()


def test_a_kubelet_root_made_after_the_watch_started_is_followed(kubelet_root):
    recorder = Recorder()
    watch = CgroupWatch(kubelet_root / "later", recorder.listener())
    watch.start()
    try:
        uid = str(uuid.uuid4())
        pod = kubelet_root / "later" / pod_cgroup_relpath(uid, "BestEffort", "systemd")
        pod.mkdir(parents=True)
        recorder.wait_for(("pod", uid, str(pod)))
    finally:
        watch.stop()


def test_the_watch_attaches_at_its_own_raised_priority_and_the_agent_keeps_its_own(kubelet_root):
    heard: list[int] = []  # the nice value of the thread a pod's cgroup is handled on
    recorder = Recorder()
    listener = recorder.listener()
    pod_seen = listener.pod

    def pod_cgroup(uid: str, path: Path) -> None:
        heard.append(os.getpriority(os.PRIO_PROCESS, threading.get_native_id()))
        pod_seen(uid, path)

    ours = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    watch = CgroupWatch(kubelet_root, dataclasses.replace(listener, pod=pod_cgroup), nice=ours - 5)
    watch.start()
    try:
        uid = str(uuid.uuid4())
        pod = kubelet_root / pod_cgroup_relpath(uid, "BestEffort", "systemd")
        pod.mkdir(parents=True)
        recorder.wait_for(("pod", uid, str(pod)))
        assert heard == [ours - 5]
        assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) == ours  # this thread's own
    finally:
        watch.stop()


def _pending_pod(uid: str, labels: dict[str, str]) -> Pod:
    return Pod.from_object(
        {
            "metadata": {"name": f"web-{uid[:4]}", "namespace": "shop", "uid": uid, "labels": labels},
            "status": {"phase": "Pending", "qosClass": "BestEffort"},
        }
    )


@pytest.fixture
def agent_parts(backend: BpffsBackend, kubelet_root: Path, watch_of: Any) -> Iterator[Any]:
    """A reconciler and a fast path on the real backend, watching the kubelet root; `wakes` counts
    the passes the fast path asked for (none runs unless the test runs it)."""
    wakes: list[float] = []
    resolver = PodCgroupResolver(kubelet_root)
    # Builds at once, in the pass; reads the kernel at the first pass only, as between resyncs.
    reconciler = Reconciler(SerializedBackend(backend), resolver, resync_due=lambda: False)
    fast = fast_path_for(reconciler, lambda: wakes.append(1))
    watch_of(CgroupListener(fast.pod_cgroup, fast.container_cgroup, fast.populated))
    yield reconciler, fast, wakes


def _pass(reconciler: Reconciler, fast: FastPath, programs: list[dict[str, Any]], pods: list[Pod]) -> None:
    wanted = [parsed(p) for p in programs]
    fast.registered(wanted, pods, reconciler.run(wanted, pods))


def test_a_registered_pod_is_attached_when_its_cgroup_appears_with_no_pass(agent_parts, kubelet_root):
    reconciler, fast, wakes = agent_parts
    uid = str(uuid.uuid4())
    counter = node_program(source=COUNTER.source, function="count_packets", selector={})
    _pass(reconciler, fast, [counter], [_pending_pod(uid, {})])  # compiles; the pod has no cgroup yet
    [ref] = reconciler.backend.loaded()
    assert reconciler.backend.attachments(ref) == {}
    pod = kubelet_root / pod_cgroup_relpath(uid, "BestEffort", "systemd")
    container = pod / container_cgroup_name(new_container_id(), "systemd")
    container.mkdir(parents=True)
    # Nobody asks and no pass runs: the watch alone attaches.
    wait_until(lambda: bool(reconciler.backend.attachments(ref)), "attached on cgroup creation")
    # The link exists a moment before the fast path records it; the hook asks about the record.
    wait_until(lambda: fast.entry(uid).ready(), "the attachment recorded")
    readiness = fast.wait_ready(uid, timeout=0)  # what the hook asks before the container starts
    assert readiness.ready, readiness.missing
    [shown] = bpftool("cgroup", "show", str(pod))
    assert shown["id"] == reconciler.backend.loaded()[ref].prog_id
    assert wakes  # the pass was told, to report Attached
    # The first datagram of the first process is counted.
    sent = run_in_cgroup(
        ["python3", "-c", "import socket; socket.socket(2, 2).sendto(b'x' * 10, ('127.0.0.1', 9))"],
        container,
        30,
    )
    assert sent.returncode == 0, sent.stderr
    counts = {int(e["formatted"]["key"]): e["formatted"]["value"] for e in _dump(reconciler, ref, "traffic")}
    assert counts[pod.stat().st_ino]["packets"] == 1


def _dump(reconciler: Reconciler, ref: Any, name: str) -> list[dict[str, Any]]:
    pin = Path(reconciler.backend.loaded()[ref].pin_dir) / "maps" / name
    return bpftool("map", "dump", "pinned", str(pin)) or []


def _sandbox_process(net: podnet.PodNetwork, container: Path) -> subprocess.Popen[bytes]:
    """The pause process as a runtime starts it: in the pod's network namespace first, then moved
    into its cgroup."""
    process = subprocess.Popen(net.exec_argv(["sleep", "30"]))
    host = os.stat("/proc/self/ns/net").st_ino
    wait_until(lambda: os.stat(f"/proc/{process.pid}/ns/net").st_ino != host, "in the pod's netns")
    (container / "cgroup.procs").write_text(str(process.pid))
    return process


def test_a_pod_gone_before_any_pass_saw_its_links_has_them_detached_by_the_next_pass(
    agent_parts, kubelet_root
):
    reconciler, fast, _ = agent_parts
    uid = str(uuid.uuid4())
    counter = node_program(source=COUNTER.source, function="count_packets", selector={})
    _pass(reconciler, fast, [counter], [_pending_pod(uid, {})])
    [ref] = reconciler.backend.loaded()
    pod = kubelet_root / pod_cgroup_relpath(uid, "BestEffort", "cgroupfs")
    (pod / new_container_id()).mkdir(parents=True)
    wait_until(lambda: fast.entry(uid).ready(), "attached on cgroup creation")
    _pass(reconciler, fast, [counter], [])  # the pod deleted: no pass ran in between
    assert reconciler.backend.attachments(ref) == {}


def test_tc_is_attached_once_the_pod_has_a_process_in_its_network_namespace(agent_parts, kubelet_root):
    reconciler, fast, _ = agent_parts
    uid = str(uuid.uuid4())
    tc = node_program(
        "tc", source=TC_SOURCE, function="pass", selector={}, attach={"type": "Tc", "direction": "Egress"}
    )
    _pass(reconciler, fast, [tc], [_pending_pod(uid, {})])
    [ref] = reconciler.backend.loaded()
    pod = kubelet_root / pod_cgroup_relpath(uid, "BestEffort", "cgroupfs")
    container = pod / new_container_id()
    container.mkdir(parents=True)
    assert not fast.wait_ready(uid, timeout=0.3).ready  # a cgroup, but no network namespace yet
    net = podnet.create(uid)
    sandbox: subprocess.Popen[bytes] | None = None
    try:
        sandbox = _sandbox_process(net, container)
        wait_until(lambda: bool(reconciler.backend.attachments(ref)), "attached on the pod's eth0")
        # The link exists a moment before the fast path records it: wait for the record too.
        wait_until(lambda: fast.entry(uid).ready(), "the attachment recorded")
        [link] = reconciler.backend.attachments(ref).values()
        assert link.live
    finally:
        if sandbox is not None:
            sandbox.kill()
            sandbox.wait()
        podnet.delete(net)


def test_a_tracing_program_gets_the_pods_cgroup_id_in_its_filter_on_cgroup_creation(
    agent_parts, kubelet_root
):
    reconciler, fast, _ = agent_parts
    uid = str(uuid.uuid4())
    source = (Path(__file__).resolve().parents[2] / "bpf" / "programs" / "exec-counter.c").read_text()
    execs = node_program(
        "execs",
        source=source,
        function="count_execs",
        selector={},
        attach={"type": "Tracepoint", "name": "sched:sched_process_exec"},
    )
    _pass(reconciler, fast, [execs], [_pending_pod(uid, {})])
    [ref] = reconciler.backend.loaded()
    pod = kubelet_root / pod_cgroup_relpath(uid, "Burstable", "systemd")
    container = pod / container_cgroup_name(new_container_id(), "systemd")
    container.mkdir(parents=True)
    wait_until(lambda: uid in reconciler.backend.attachments(ref), "in the pod filter")
    assert reconciler.backend.attachments(ref)[uid].target_id == pod.stat().st_ino
    # The first exec in the pod is counted.
    assert run_in_cgroup(["true"], container, 30).returncode == 0
    counts = {int(e["formatted"]["key"]): e["formatted"]["value"] for e in _dump(reconciler, ref, "execs")}
    assert counts[pod.stat().st_ino] >= 1
