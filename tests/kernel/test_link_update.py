"""BpffsBackend.update on the real kernel: a new version takes over a pod's link in place.

Two observers sample the hook while the update runs: bpftool from a thread (independent of the
backend's bpf(2) code, but slow: a few samples) and a tight BPF_PROG_QUERY / link-info loop in its own
process (hook_sampler: many samples, enough to catch a gap or an overlap of microseconds). Every
sample must show exactly one of the two versions.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from node_agent import errors
from node_agent.kernel import syscalls
from node_agent.kernel.attach_types import kernel_attach
from node_agent.kernel.backend import ProgramBuild, ProgramRef
from node_agent.kernel.bpffs import BpffsBackend
from node_agent.model import Pod
from node_agent.reconcile import Reconciler
from tests.unit import builders

pytestmark = pytest.mark.kernel

REPO = Path(__file__).resolve().parents[2]
COUNTER_SOURCE = (REPO / "bpf" / "programs" / "pod-traffic-counter.c").read_text()
XDP_SOURCE = (REPO / "bpf" / "programs" / "xdp-protocol-counter.c").read_text()
EGRESS = kernel_attach({"type": "CgroupSkb", "direction": "Egress"})
XDP = kernel_attach({"type": "Xdp", "mode": "Generic"})
# Run the observers this long before and after the update.
AROUND = 0.3


def ref(name: str, version: str) -> ProgramRef:
    return ProgramRef("team-a", name, version)


def bpftool(*args: str, netns: str = "") -> Any:
    argv = ["bpftool", "-j", *args]
    if netns:
        argv = ["ip", "netns", "exec", netns, *argv]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=True)
    return json.loads(proc.stdout or "null")


class Sampler:
    """Calls `sample()` in a loop on its own thread until stopped; keeps every result."""

    def __init__(self, sample: Callable[[], Any]) -> None:
        self.sample, self.samples, self.errors = sample, [], []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.samples.append(self.sample())
            except Exception as e:  # reported by the test, not lost in the thread
                self.errors.append(e)
                return

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(10)


class FastSampler:
    """hook_sampler in a child process, sampling for 2 * AROUND from when it says ready."""

    def __init__(self, *args: str, pass_fds: tuple[int, ...] = ()) -> None:
        argv = [sys.executable, "-m", "tests.kernel.hook_sampler", *args]
        self.proc = subprocess.Popen(argv, cwd=REPO, stdout=subprocess.PIPE, text=True, pass_fds=pass_fds)
        self.result: dict[str, Any] = {}

    def __enter__(self) -> FastSampler:
        assert self.proc.stdout is not None
        assert self.proc.stdout.readline().strip() == "ready"
        return self

    def __exit__(self, *_: object) -> None:
        try:
            out, _err = self.proc.communicate(timeout=30)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
        self.result = json.loads(out)


def transitions(samples: list[Any]) -> list[Any]:
    """The distinct values in order: [v1, v2] for a clean switch."""
    out: list[Any] = []
    for s in samples:
        if not out or out[-1] != s:
            out.append(s)
    return out


def test_a_cgroup_counter_moves_to_v2_with_always_exactly_one_program_and_the_same_link(
    backend: BpffsBackend, pod_cgroups
):
    pod = pod_cgroups()
    v1, v2 = ref("counter", "0000000000000001"), ref("counter", "0000000000000002")
    one = backend.load(v1, ProgramBuild(COUNTER_SOURCE, "count_packets", EGRESS))
    two = backend.load(v2, ProgramBuild(COUNTER_SOURCE + "\n/* v2 */\n", "count_packets", EGRESS))
    assert one.prog_id != two.prog_id
    before = backend.attach(v1, pod.uid, pod.pod, EGRESS)
    ours = {one.prog_id, two.prog_id}

    def by_bpftool() -> tuple[int, ...]:
        return tuple(sorted(p["id"] for p in bpftool("cgroup", "show", str(pod.pod)) if p["id"] in ours))

    query = ("cgroup", str(pod.pod), str(EGRESS.attach_type), str(2 * AROUND), *map(str, ours))
    with Sampler(by_bpftool) as slow, FastSampler(*query) as fast:
        time.sleep(AROUND)
        after = backend.update(v1, v2, pod.uid, pod.pod, EGRESS)
    assert not slow.errors, slow.errors
    assert transitions(slow.samples) == [(one.prog_id,), (two.prog_id,)], transitions(slow.samples)
    assert fast.result["transitions"] == [[one.prog_id], [two.prog_id]], fast.result
    assert fast.result["samples"] > 1000  # dense enough to see a gap of microseconds
    assert after.link_id == before.link_id and after.target_id == pod.cgroup_id
    # The pin moved with the link: v2 owns it, and unloading v1 leaves it attached.
    assert set(backend.attachments(v2)) == {pod.uid} and backend.attachments(v1) == {}
    backend.unload(v1)
    [link] = [p for p in bpftool("cgroup", "show", str(pod.pod)) if p["id"] in ours]
    assert link["id"] == two.prog_id
    assert backend.attachments(v2)[pod.uid].link_id == before.link_id


class OneCgroup:
    def __init__(self, uid: str, path: Path) -> None:
        self.uid, self.path, self.kubelet_root = uid, path, path.parent

    def find(self, uid: str, qos_class: str | None) -> Path | None:
        return self.path if uid == self.uid else None


def test_the_reconciler_moves_the_pods_link_to_the_new_version(backend: BpffsBackend, pod_cgroups):
    pod = pod_cgroups()
    reconciler = Reconciler(backend, OneCgroup(pod.uid, pod.pod))
    web = builders.pod("web-1", {"app": "web"})
    web["metadata"]["uid"] = pod.uid
    pods = [Pod.from_object(web)]

    def serve(source: str) -> int:
        obj = builders.node_program(source=source, attach=builders.SKB_EGRESS)
        obj["spec"]["function"] = "count_packets"
        reconciler.run([builders.parsed(obj)], pods)
        [(ref, loaded)] = backend.loaded().items()
        assert [p["id"] for p in bpftool("cgroup", "show", str(pod.pod))] == [loaded.prog_id]
        return backend.attachments(ref)[pod.uid].link_id

    first = serve(COUNTER_SOURCE)
    assert serve(COUNTER_SOURCE + "\n/* v2 */\n") == first


def test_a_link_on_another_hook_is_refused_and_left_as_it_was(backend: BpffsBackend, pod_cgroups):
    pod = pod_cgroups()
    ingress = kernel_attach({"type": "CgroupSkb", "direction": "Ingress"})
    v1, v2 = ref("counter", "0000000000000001"), ref("counter", "0000000000000002")
    one = backend.load(v1, ProgramBuild(COUNTER_SOURCE, "count_packets", EGRESS))
    backend.load(v2, ProgramBuild(COUNTER_SOURCE, "count_packets", ingress))
    before = backend.attach(v1, pod.uid, pod.pod, EGRESS)
    with pytest.raises(errors.AttachFailed, match="hook"):
        backend.update(v1, v2, pod.uid, pod.pod, ingress)
    assert backend.attachments(v1)[pod.uid] == before
    assert [p["id"] for p in bpftool("cgroup", "show", str(pod.pod))] == [one.prog_id]


@pytest.fixture
def pod_in_netns(pod_cgroups) -> Iterator[tuple[Any, str]]:
    """A pod cgroup whose process lives in its own network namespace with eth0 (a veth to the host)."""
    pod = pod_cgroups()
    name = f"bpfleet-test-{secrets.token_hex(3)}"
    host_end = f"bft{secrets.token_hex(3)}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    sleeper = None
    try:
        subprocess.run(
            ["ip", "link", "add", host_end, "type", "veth", "peer", "name", "eth0", "netns", name], check=True
        )
        subprocess.run(["ip", "-n", name, "link", "set", "eth0", "up"], check=True)
        subprocess.run(["ip", "link", "set", host_end, "up"], check=True)
        procs = pod.container / "cgroup.procs"
        sleeper = subprocess.Popen(
            ["ip", "netns", "exec", name, "sleep", "300"],
            preexec_fn=lambda: procs.write_text(str(os.getpid())),
        )
        deadline = time.monotonic() + 5
        while not _in_netns(sleeper.pid, name) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert _in_netns(sleeper.pid, name), "the pod process never entered its network namespace"
        yield pod, name
    finally:
        if sleeper is not None:
            sleeper.kill()
            sleeper.wait()
        subprocess.run(["ip", "link", "del", host_end], check=False, capture_output=True)
        subprocess.run(["ip", "netns", "del", name], check=False)


def _in_netns(pid: int, name: str) -> bool:
    try:
        return os.stat(f"/proc/{pid}/ns/net").st_ino == os.stat(f"/run/netns/{name}").st_ino
    except FileNotFoundError:
        return False


def test_xdp_on_a_pods_veth_updates_without_ebusy_and_without_a_gap(backend: BpffsBackend, pod_in_netns):
    pod, netns = pod_in_netns
    v1, v2 = ref("xdp", "0000000000000001"), ref("xdp", "0000000000000002")
    one = backend.load(v1, ProgramBuild(XDP_SOURCE, "count_protocols", XDP))
    two = backend.load(v2, ProgramBuild(XDP_SOURCE + "\n/* v2 */\n", "count_protocols", XDP))
    before = backend.attach(v1, pod.uid, pod.pod, XDP)

    def by_bpftool() -> tuple[int, ...]:
        shown = bpftool("net", "show", "dev", "eth0", netns=netns)
        return tuple(p["id"] for entry in shown for p in entry.get("xdp", []))

    link_fd = syscalls.obj_get(str(Path(one.pin_dir) / "links" / pod.uid))
    try:
        with (
            Sampler(by_bpftool) as slow,
            FastSampler("link", str(link_fd), str(2 * AROUND), pass_fds=(link_fd,)) as fast,
        ):
            time.sleep(AROUND)
            after = backend.update(v1, v2, pod.uid, pod.pod, XDP)  # no EBUSY: the same link
    finally:
        os.close(link_fd)
    assert not slow.errors, slow.errors
    assert transitions(slow.samples) == [(one.prog_id,), (two.prog_id,)], transitions(slow.samples)
    # The link stayed on the interface (ifindex never 0) and switched program once.
    ifindex = before.target_id
    assert fast.result["transitions"] == [[one.prog_id, ifindex], [two.prog_id, ifindex]], fast.result
    assert after.link_id == before.link_id
    backend.unload(v1)
    assert by_bpftool() == (two.prog_id,)
    assert backend.attachments(v2)[pod.uid].live
