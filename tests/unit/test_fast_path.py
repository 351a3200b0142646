"""The fast path's pure parts: kubelet's cgroup names read back for both drivers, the registration
bookkeeping a pass leaves, and the fast path attaching from it without a pass (in-memory kernel)."""

from __future__ import annotations

import json
import threading
import time
import uuid
from pathlib import Path, PurePath

import pytest

from e2e.podsim import container_cgroup_name, new_container_id, pod_cgroup_relpath
from node_agent import hook
from node_agent.cgroups import QOS_PARENTS, container_id_of, pod_uid_of
from node_agent.compile_pool import CompilePool
from node_agent.fast_path import FastPath
from node_agent.hook_server import HookServer, answer
from node_agent.model import Pod
from node_agent.pod_registry import AT_CGROUP, AT_NETWORK, PASS_ONLY, entries_from_pass, merged
from node_agent.reconcile import Reconciler
from node_agent.serialized_backend import SerializedBackend
from tests.unit.builders import node_program, parsed, pod
from tests.unit.fakes import FakeBackend, FakeCgroups, ManualStart

WEB = {"app": "web"}
UID = "0b1c2d3e-4f50-6172-8394-a5b6c7d8e9f0"
TC = {"type": "Tc", "direction": "Egress"}
UPROBE = {"type": "Uprobe", "binary": "/bin/target", "symbol": "f"}

# -- kubelet's names, both drivers -----------------------------------------------------------------


@pytest.mark.parametrize("driver", ["systemd", "cgroupfs"])
@pytest.mark.parametrize("qos", ["Guaranteed", "Burstable", "BestEffort"])
def test_pod_uid_is_read_back_from_every_layout_kubelet_makes(driver, qos):
    rel = PurePath(pod_cgroup_relpath(UID, qos, driver))
    assert rel.parent in QOS_PARENTS
    assert pod_uid_of(rel.parent, rel.name) == UID


@pytest.mark.parametrize(
    ("parent", "name"),
    [
        ("kubepods", "burstable"),  # a QoS parent, not a pod
        ("kubepods.slice", "kubepods-besteffort.slice"),
        ("kubepods/besteffort", "podnot-a-uuid"),
        ("kubepods/besteffort", f"pod{UID.upper()}"),
        ("kubepods.slice/kubepods-besteffort.slice", f"kubepods-burstable-pod{UID.replace('-', '_')}.slice"),
        ("kubepods.slice", f"kubepods-besteffort-pod{UID.replace('-', '_')}.slice"),
        ("system.slice", f"kubepods-pod{UID.replace('-', '_')}.slice"),  # outside kubelet's tree
        ("kubepods/besteffort/pod" + UID, f"pod{UID}"),  # a pod inside a pod
    ],
)
def test_directories_that_are_no_pod_cgroup_are_not_taken_for_one(parent, name):
    assert pod_uid_of(PurePath(parent), name) is None


@pytest.mark.parametrize("driver", ["systemd", "cgroupfs"])
def test_container_ids_are_read_back_for_both_drivers(driver):
    cid = new_container_id()
    assert container_id_of(container_cgroup_name(cid, driver)) == cid
    assert container_id_of(f"crio-{cid}.scope") == cid


@pytest.mark.parametrize(
    "name", ["cgroup.procs", "crio-conmon-" + "a" * 64 + ".scope", "ab" * 31, "init.scope"]
)
def test_other_children_of_a_pod_are_no_containers(name):
    assert container_id_of(name) is None


# -- registrations ----------------------------------------------------------------------------------


def _run(reconciler: Reconciler, programs: list[dict], pods: list[dict]):
    wanted = [parsed(p) for p in programs]
    pod_values = [Pod.from_object(p) for p in pods]
    return wanted, pod_values, reconciler.run(wanted, pod_values)


@pytest.fixture
def kernel() -> FakeBackend:
    return FakeBackend()


@pytest.fixture
def cgroups() -> FakeCgroups:
    return FakeCgroups()


class Wakes:
    def __init__(self) -> None:
        self.count = 0

    def __call__(self) -> None:
        self.count += 1


def _fast(kernel: FakeBackend, cgroups: FakeCgroups) -> tuple[Reconciler, FastPath, Wakes]:
    wakes = Wakes()
    reconciler = Reconciler(SerializedBackend(kernel), cgroups)  # builds at once, in the pass
    return reconciler, FastPath(reconciler.backend, cgroups, wakes), wakes


def test_a_pending_pod_is_registered_with_what_will_serve_it(kernel, cgroups):
    reconciler, _, _ = _fast(kernel, cgroups)
    programs = [node_program(), node_program("deny", attach={"type": "CgroupSockAddr", "hook": "Connect4"})]
    parsed, pods, result = _run(reconciler, programs, [pod("web-1", WEB, phase="Pending"), pod("db", {})])
    entries = entries_from_pass(parsed, pods, result)
    web = entries["uid-web-1"]
    assert sorted(ref.name for ref in web.wanted) == ["counter", "deny"]
    assert web.attached == set() and web.pending
    assert {w.when for w in web.wanted.values()} == {AT_CGROUP}
    assert web.missing() == ["shop/counter", "shop/deny"]
    assert entries["uid-db"].wanted == {} and entries["uid-db"].ready()  # seen, selected by none


def test_the_fast_path_attaches_on_cgroup_creation_without_a_pass(kernel, cgroups):
    reconciler, fast, wakes = _fast(kernel, cgroups)
    fast.registered(*_run(reconciler, [node_program()], [pod("web-1", WEB, phase="Pending")]))
    assert kernel.links == {}
    cgroups.present.add("uid-web-1")
    fast.pod_cgroup("uid-web-1", Path("/cgroup/poduid-web-1"))
    [(ref, links)] = kernel.links.items()
    assert ref.name == "counter" and set(links) == {"uid-web-1"}
    assert fast.entry("uid-web-1").ready()
    assert wakes.count == 1  # the pass is told, to report Attached
    # The pass then finds the link and attaches nothing more.
    _, _, result = _run(reconciler, [node_program()], [pod("web-1", WEB, phase="Pending")])
    assert [p.state for p in result.reports[0].pods] == ["Attached"]
    assert len(kernel.links[ref]) == 1


def test_a_cgroup_of_a_pod_nobody_registered_only_wakes_the_pass(kernel, cgroups):
    _, fast, wakes = _fast(kernel, cgroups)
    fast.pod_cgroup("uid-unknown", Path("/cgroup/poduid-unknown"))
    assert kernel.links == {} and wakes.count == 1


def test_a_cgroup_made_while_the_pass_ran_is_attached_at_registration(kernel, cgroups):
    reconciler, fast, _ = _fast(kernel, cgroups)
    programs, pods, result = _run(reconciler, [node_program()], [pod("web-1", WEB, phase="Pending")])
    cgroups.present.add("uid-web-1")  # after the pass looked, before it registered
    fast.registered(programs, pods, result)
    assert set(next(iter(kernel.links.values()))) == {"uid-web-1"}


def test_running_pods_failures_are_left_to_the_pass(kernel, cgroups):
    reconciler, fast, _ = _fast(kernel, cgroups)
    cgroups.present.add("uid-web-1")
    kernel.refuse_attach.add("uid-web-1")
    programs, pods, result = _run(reconciler, [node_program()], [pod("web-1", WEB)])
    kernel.refuse_attach.clear()
    fast.registered(programs, pods, result)
    assert kernel.links == {}  # no retry at every pass: the pass's failure pace holds


def test_what_the_fast_path_attached_during_a_pass_stays_attached_in_the_books(kernel, cgroups):
    reconciler, fast, _ = _fast(kernel, cgroups)
    before = _run(reconciler, [node_program()], [pod("web-1", WEB, phase="Pending")])
    fast.registered(*before)
    # The next pass read the kernel before the cgroup came; the fast path attached meanwhile.
    stale = _run(reconciler, [node_program()], [pod("web-1", WEB, phase="Pending")])
    cgroups.present.add("uid-web-1")
    fast.pod_cgroup("uid-web-1", Path("/cgroup/poduid-web-1"))
    fast.registered(*stale)
    assert fast.entry("uid-web-1").ready()
    old = entries_from_pass(*before)
    assert merged(old, entries_from_pass(*stale))["uid-web-1"].attached == set()


def test_a_program_still_compiling_holds_readiness_and_a_failed_one_does_not(kernel, cgroups):
    wakes = Wakes()
    builds = ManualStart()
    reconciler = Reconciler(kernel, cgroups, pool=CompilePool(kernel.load, start=builds))
    fast = FastPath(reconciler.backend, cgroups, wakes)
    programs = [node_program("a", source="int a;"), node_program("b", source="int b;")]
    _run(reconciler, programs, [pod("web-1", WEB, phase="Pending")])  # both handed to the pool
    builds.finish_one()  # a is built; b still compiles
    fast.registered(*_run(reconciler, programs, [pod("web-1", WEB, phase="Pending")]))
    entry = fast.entry("uid-web-1")
    assert len(entry.wanted) == 1 and len(entry.unserved) == 1
    assert entry.missing()[-1].endswith("(compiling)")
    kernel.broken_sources["int b;"] = __import__("node_agent.errors").errors.CompileError("no")
    builds.finish_all()
    fast.registered(*_run(reconciler, programs, [pod("web-1", WEB, phase="Pending")]))
    assert fast.entry("uid-web-1").unserved == []


def test_tc_waits_for_a_process_in_the_pod_and_uprobes_never_hold_a_start(kernel, cgroups):
    reconciler, fast, _ = _fast(kernel, cgroups)
    programs = [node_program("tc", attach=TC), node_program("probe", attach=UPROBE)]
    fast.registered(*_run(reconciler, programs, [pod("web-1", WEB, phase="Pending")]))
    entry = fast.entry("uid-web-1")
    assert sorted(w.when for w in entry.wanted.values()) == [AT_NETWORK, PASS_ONLY]
    assert entry.missing() == ["shop/tc"]  # the uprobe needs the container's process: it holds nothing
    kernel.refuse_attach.add("uid-web-1")  # no process in the pod's network namespace yet
    fast.pod_cgroup("uid-web-1", Path("/cgroup/poduid-web-1"))
    assert kernel.links == {}
    kernel.refuse_attach.clear()  # a first process joined: cgroup.events changed
    fast.populated("uid-web-1", Path("/cgroup/poduid-web-1"))
    assert [ref.name for ref in kernel.links] == ["tc"]
    assert fast.entry("uid-web-1").ready()


# -- waiting for readiness (the hook's question) ------------------------------------------------------


def test_waiting_for_a_pod_answers_once_a_pass_has_seen_it_and_its_programs_attached(kernel, cgroups):
    reconciler, fast, wakes = _fast(kernel, cgroups)
    cgroups.present.add("uid-web-1")

    def pass_later() -> None:
        time.sleep(0.2)
        fast.registered(*_run(reconciler, [node_program()], [pod("web-1", WEB, phase="Pending")]))

    thread = threading.Thread(target=pass_later)
    thread.start()
    readiness = fast.wait_ready("uid-web-1", timeout=5)
    thread.join()
    assert readiness.ready and readiness.known and 0.15 < readiness.waited < 4
    assert wakes.count >= 1


def test_waiting_ends_at_the_deadline_with_what_is_missing(kernel, cgroups):
    reconciler, fast, _ = _fast(kernel, cgroups)
    unknown = fast.wait_ready("uid-web-1", timeout=0.1)
    assert not unknown.ready and not unknown.known and unknown.missing
    fast.registered(*_run(reconciler, [node_program()], [pod("web-1", WEB, phase="Pending")]))
    no_cgroup = fast.wait_ready("uid-web-1", timeout=0.1)
    assert not no_cgroup.ready and no_cgroup.known and no_cgroup.missing == ["shop/counter"]


def test_the_hook_socket_refuses_what_is_not_a_pod_uid(kernel, cgroups):
    _, fast, _ = _fast(kernel, cgroups)
    for request in (None, [], {"pod": 1}, {"pod": "../../etc"}, {"pod": UID, "timeout": "x"}):
        assert answer(fast, request)["ready"] is False
    assert answer(fast, {"pod": UID, "timeout": -3})["ready"] is False  # clamped to 0: no wait


# -- the hook CLI's reading of OCI state -------------------------------------------------------------


@pytest.mark.parametrize(
    "annotations",
    [
        {"io.kubernetes.cri.sandbox-uid": UID, "io.kubernetes.cri.container-name": "app"},
        {"io.kubernetes.pod.uid": UID, "io.kubernetes.container.name": "app"},
        {
            "io.kubernetes.cri-o.Labels": json.dumps({"io.kubernetes.pod.uid": UID}),
            "io.kubernetes.container.name": "app",
        },
    ],
)
def test_the_hook_reads_the_pod_uid_from_both_runtimes_annotations(annotations):
    assert hook.pod_of({"ociVersion": "1.0.2", "id": "x", "annotations": annotations}) == (UID, "app")


@pytest.mark.parametrize("kind", ["io.kubernetes.cri.container-type", "io.kubernetes.cri-o.ContainerType"])
def test_a_pods_sandbox_is_not_held(kind):
    annotations = {"io.kubernetes.cri.sandbox-uid": UID, "io.kubernetes.pod.uid": UID, kind: "sandbox"}
    assert hook.pod_of({"annotations": annotations}) == ("", "")


def test_a_container_of_no_pod_is_let_through_at_once(monkeypatch, capsys):
    monkeypatch.setattr("sys.stdin", __import__("io").StringIO(json.dumps({"id": "x", "annotations": {}})))
    assert hook.main(["--socket", "/nonexistent/agent.sock", "--fail-closed"]) == 0


@pytest.mark.parametrize(("fail_closed", "code"), [(False, 0), (True, 1)])
def test_an_agent_that_does_not_answer_fails_open_unless_told_otherwise(
    monkeypatch, capsys, fail_closed, code
):
    state = {"annotations": {"io.kubernetes.cri.sandbox-uid": str(uuid.uuid4())}}
    monkeypatch.setattr("sys.stdin", __import__("io").StringIO(json.dumps(state)))
    args = ["--socket", "/nonexistent/agent.sock", "--timeout", "0.1"] + (
        ["--fail-closed"] if fail_closed else []
    )
    assert hook.main(args) == code
    assert "agent not reachable" in capsys.readouterr().err


# -- one lock ---------------------------------------------------------------------------------------------


def test_a_fast_path_attach_waits_while_the_pass_mutates_the_kernel(kernel, cgroups):
    backend = SerializedBackend(kernel)
    fast = FastPath(backend, cgroups, lambda: None)
    fast.registered(
        *_run(Reconciler(backend, cgroups), [node_program()], [pod("web-1", WEB, phase="Pending")])
    )
    done = threading.Event()
    with backend.lock:  # the pass, in the middle of an unload
        thread = threading.Thread(target=lambda: (fast.pod_cgroup("uid-web-1", Path("/c")), done.set()))
        thread.start()
        assert not done.wait(0.2)
        assert all(not links for links in kernel.links.values())
    assert done.wait(5)
    thread.join()
    assert any(kernel.links.values())


def test_the_hook_asks_the_agent_over_its_socket(kernel, cgroups, tmp_path):
    reconciler, fast, _ = _fast(kernel, cgroups)
    web = pod("web-1", WEB, phase="Pending")
    web["metadata"]["uid"] = UID
    fast.registered(*_run(reconciler, [node_program()], [web]))
    server = HookServer(tmp_path / "run" / "agent.sock", fast)
    server.start()
    try:
        assert (tmp_path / "run" / "agent.sock").stat().st_mode & 0o777 == 0o600
        assert hook.ask(server.path, UID, "app", 0.1) == {
            "ready": False,
            "known": True,
            "missing": ["shop/counter"],
            "waited": pytest.approx(0.1, abs=0.5),
        }
        cgroups.present.add(UID)  # kubelet made the cgroup: the question itself attaches
        assert hook.ask(server.path, UID, "app", 5)["ready"] is True
    finally:
        server.stop()
    assert not server.path.exists()


def test_a_pod_the_watch_shows_before_any_pass_registered_it_is_attached_on_cgroup_creation(kernel, cgroups):
    reconciler, fast, _ = _fast(kernel, cgroups)
    watched: dict[str, Pod] = {}
    fast.pod_lookup = watched.get
    watched["uid-web-1"] = Pod.from_object(pod("web-1", WEB, phase="Pending"))
    assert fast.entry("uid-web-1") is None  # no pass yet: what serves it is not known
    fast.registered(*_run(reconciler, [node_program()], []))  # a pass that did not see the pod
    cgroups.present.add("uid-web-1")
    fast.pod_cgroup("uid-web-1", Path("/cgroup/poduid-web-1"))
    assert [set(links) for links in kernel.links.values()] == [{"uid-web-1"}]
    assert fast.entry("uid-web-1").ready()
    assert fast.entry("uid-unknown") is None


def test_xdp_waits_for_the_network_like_tc():
    program = parsed(node_program("xdp", attach={"type": "Xdp"}))
    entries = entries_from_pass(
        [program],
        [Pod.from_object(pod("web-1", WEB, phase="Pending"))],
        Reconciler(FakeBackend(), FakeCgroups()).run([program], []),
    )
    assert [w.when for w in entries["uid-web-1"].wanted.values()] == [AT_NETWORK]


def test_a_container_cgroup_wakes_the_pass_for_what_only_it_can_attach(kernel, cgroups):
    reconciler, fast, wakes = _fast(kernel, cgroups)
    fast.registered(
        *_run(reconciler, [node_program("probe", attach=UPROBE)], [pod("web-1", WEB, phase="Pending")])
    )
    fast.registered(
        *_run(reconciler, [node_program("probe", attach=UPROBE)], [pod("web-1", WEB, phase="Pending")])
    )
    before = wakes.count
    fast.container_cgroup("uid-web-1", "a" * 64, Path("/cgroup/poduid-web-1/" + "a" * 64))
    assert kernel.links == {}  # the uprobe is the pass's (it needs the container's process)
    assert wakes.count == before + 1
    _, plain, plain_wakes = _fast(FakeBackend(), cgroups)
    plain.registered(*_run(reconciler, [node_program()], [pod("web-2", WEB, phase="Pending")]))
    plain.container_cgroup("uid-unknown-pod", "a" * 64, Path("/c/" + "a" * 64))
    assert plain_wakes.count == 1  # a pod no pass has seen: only the pass can tell
