"""The planner, pure: from what should run and the observed model, the actions of a pass. The kernel
is the in-memory fake, set up by hand; planning never changes it."""

from __future__ import annotations

import copy
from pathlib import Path

from node_agent.actions import Attach, AttachNode, Detach, DetachNode, Unload, Update
from node_agent.errors import CompileError
from node_agent.kernel.backend import NODE_TARGET
from node_agent.model import NodeProgram, Pod, Trust
from node_agent.observed import Observed
from node_agent.planner import BuildState, Plan, plan
from node_agent.reports import ATTACHED, FAILED, WAITING
from tests.unit.builders import cluster_program, node_program, parsed, pod
from tests.unit.fakes import FakeBackend

WEB = {"app": "web"}
TRUST = Trust("bpfleet-system")


def program(obj: dict) -> NodeProgram:
    return parsed(obj, TRUST)


def planned(
    kernel: FakeBackend,
    programs: list[dict],
    pods: list[dict],
    cgroups: set[str] | None = None,
    builds: BuildState | None = None,
    held: set[tuple[str, str]] | None = None,
) -> Plan:
    observed = Observed(kernel)
    observed.refresh(full=True)
    present = {p["metadata"]["uid"] for p in pods} if cgroups is None else cgroups
    before = copy.deepcopy((kernel.programs, kernel.links, kernel.node_links))
    result = plan(
        [program(p) for p in programs],
        [Pod.from_object(p) for p in pods],
        observed,
        builds or BuildState(),
        lambda p: Path(f"/cgroup/pod{p.uid}") if p.uid in present else None,
        Path("/cgroup"),
        held or set(),
    )
    assert (kernel.programs, kernel.links, kernel.node_links) == before, "planning changed the kernel"
    return result


def loaded(kernel: FakeBackend, obj: dict, pods: tuple[str, ...] = ()):
    """The program's version as if built and attached to these pod UIDs earlier."""
    ref = program(obj).ref
    kernel.load(ref, program(obj).build)
    for uid in pods:
        kernel.attach(ref, uid, Path(f"/cgroup/pod{uid}"), program(obj).build.attach)
    return ref


def kinds(result: Plan) -> list[tuple[str, str]]:
    return [(type(a).__name__, getattr(a, "pod_uid", "") or getattr(a, "target", "")) for a in result.actions]


def test_nothing_to_do_plans_nothing():
    kernel = FakeBackend()
    loaded(kernel, node_program(), ("uid-web-1",))
    result = planned(kernel, [node_program()], [pod("web-1", WEB)])
    assert result.actions == []
    assert [(p.name, p.state) for p in result.reports[0].pods] == [("web-1", ATTACHED)]


def test_a_new_pod_is_one_attach_and_a_pod_gone_one_detach():
    kernel = FakeBackend()
    ref = loaded(kernel, node_program(), ("uid-web-1",))
    result = planned(kernel, [node_program()], [pod("web-2", WEB)])
    assert kinds(result) == [("Detach", "uid-web-1"), ("Attach", "uid-web-2")]
    detach, attach = result.actions
    assert isinstance(detach, Detach) and detach.ref == ref and detach.program is result.reports[0]
    assert isinstance(attach, Attach) and attach.cgroup == Path("/cgroup/poduid-web-2")
    assert attach.report is result.reports[0].pods[0]  # the executor marks it Failed if refused


def test_pods_without_a_cgroup_wait_or_fail_and_cost_no_action():
    kernel = FakeBackend()
    loaded(kernel, node_program())
    pods = [pod("web-1", WEB, phase="Pending"), pod("web-2", WEB)]
    result = planned(kernel, [node_program()], pods, cgroups=set())
    assert result.actions == []
    assert [p.state for p in result.reports[0].pods] == [WAITING, FAILED]


def test_a_new_version_moves_links_in_place_and_unloads_the_old_one_last():
    kernel = FakeBackend()
    old = loaded(kernel, node_program(source="v1"), ("uid-web-1", "uid-web-2"))
    new = loaded(kernel, node_program(source="v2", generation=2))
    result = planned(
        kernel, [node_program(source="v2", generation=2)], [pod("web-1", WEB), pod("web-2", WEB)]
    )
    assert kinds(result) == [("Update", ""), ("Update", ""), ("Unload", "")]
    first, second, unload = result.actions
    assert isinstance(first, Update) and first.old == old and first.then.ref == new
    assert isinstance(second, Update) and second.then.pod_uid == "uid-web-2"
    assert unload == Unload(old, result.reports[0])


def test_a_version_waiting_for_the_pool_keeps_the_old_one_serving_with_nothing_to_do():
    kernel = FakeBackend()
    old = loaded(kernel, node_program(source="v1"), ("uid-web-1",))
    new = program(node_program(source="v2", generation=2)).ref
    builds = BuildState(waiting={new: 0})
    result = planned(kernel, [node_program(source="v2", generation=2)], [pod("web-1", WEB)], builds=builds)
    assert result.actions == [] and result.serving == {old}
    report = result.reports[0]
    assert report.queued == 0 and report.serving_version == old.version and report.build_error is None


def test_a_failed_build_keeps_the_old_one_serving_and_says_why():
    kernel = FakeBackend()
    old = loaded(kernel, node_program(source="v1"), ("uid-web-1",))
    new = program(node_program(source="v2", generation=2)).ref
    builds = BuildState(failures={new: CompileError("program.c:1:1: error: nope")})
    result = planned(kernel, [node_program(source="v2", generation=2)], [pod("web-1", WEB)], builds=builds)
    assert result.actions == [] and result.serving == {old}
    assert isinstance(result.reports[0].build_error, CompileError) and result.reports[0].queued is None


def test_a_build_nobody_wants_is_only_unloaded():
    kernel = FakeBackend()
    v1 = loaded(kernel, node_program(source="v1"), ("uid-web-1",))
    v2 = loaded(kernel, node_program(source="v2"))  # built, then overtaken by v3
    v3 = program(node_program(source="v3")).ref
    builds = BuildState(waiting={v3: 0}, unwanted=frozenset({v2}))
    result = planned(kernel, [node_program(source="v3")], [pod("web-1", WEB)], builds=builds)
    assert result.serving == {v1} and result.actions == [Unload(v2, result.reports[0])]


def test_a_held_program_is_left_alone_and_a_deleted_one_unloaded():
    kernel = FakeBackend()
    held = loaded(kernel, node_program("held"), ("uid-web-1",))
    gone = loaded(kernel, node_program("gone"), ("uid-web-1",))
    result = planned(kernel, [], [pod("web-1", WEB)], held={held.program})
    assert result.actions == [Unload(gone, None)] and result.serving == {held}


def test_scope_node_attaches_new_interfaces_and_detaches_vanished_ones():
    kernel = FakeBackend(interfaces={"lo": 1, "eth0": 2, "eth1": 3})
    tc = {"type": "Tc", "direction": "Ingress", "interface": "eth*"}
    obj = cluster_program(scope="Node", attach=tc)
    ref = loaded(kernel, obj)
    kernel.attach_node(ref, "eth0", program(obj).build.attach)
    del kernel.interfaces["eth0"]
    kernel.interfaces["eth2"] = 4
    result = planned(kernel, [obj], [])
    assert kinds(result) == [("DetachNode", "eth0"), ("AttachNode", "eth1"), ("AttachNode", "eth2")]
    assert all(isinstance(a, (DetachNode, AttachNode)) for a in result.actions)
    assert result.follows_interfaces


def test_node_wide_tracing_is_one_node_attach():
    kernel = FakeBackend()
    obj = cluster_program(scope="Node", attach={"type": "Tracepoint", "name": "sched:sched_process_exec"})
    ref = loaded(kernel, obj)
    result = planned(kernel, [obj], [pod("web-1", WEB)])
    assert result.actions == [
        AttachNode(ref, NODE_TARGET, program(obj).build.attach, result.reports[0].targets[0])
    ]
