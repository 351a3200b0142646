"""Scope Node (ClusterEbpfPrograms): node-wide tracing and host interfaces, and the compile queue's
status, against the in-memory kernel."""

from __future__ import annotations

from bpfleet_api import reasons
from node_agent.compile_pool import CompilePool
from node_agent.compile_queue import CompileQueue
from node_agent.kernel.backend import NODE_TARGET
from node_agent.model import Pod, Trust
from node_agent.reconcile import ATTACHED, FAILED, PassResult, Reconciler
from node_agent.status import QUEUED
from tests.unit.builders import cluster_program, node_program, parsed, pod, report_entry
from tests.unit.fakes import FakeBackend, FakeCgroups, ManualStart

TRUST = Trust(system_namespace="bpfleet-system")
TRACEPOINT = {"type": "Tracepoint", "name": "sched:sched_process_exec"}
TC_ETH = {"type": "Tc", "direction": "Ingress", "interface": "eth*"}


def node_scoped(attach: dict, name: str = "admin", **kwargs) -> dict:
    return cluster_program(name, scope="Node", attach=attach, **kwargs)


def run(reconciler: Reconciler, programs: list[dict], pods: list[dict] | None = None) -> PassResult:
    return reconciler.run([parsed(p, TRUST) for p in programs], [Pod.from_object(p) for p in pods or []])


def targets(result: PassResult) -> list[tuple[str, str]]:
    [report] = result.reports
    return [(t.name, t.state) for t in report.targets]


def ready(result: PassResult) -> dict:
    [report] = result.reports
    status = report_entry(report)
    condition = {
        "status": str(status["ready"]),
        "reason": status["reason"],
        "message": status.get("message", ""),
    }
    return {**status, "ready": condition}


def test_node_wide_tracing_has_one_link_and_no_pods():
    kernel = FakeBackend()
    reconciler = Reconciler(kernel, FakeCgroups({"uid-web-1"}))
    result = run(reconciler, [node_scoped(TRACEPOINT)], [pod("web-1", {"app": "web"})])
    assert targets(result) == [(NODE_TARGET, ATTACHED)]
    [ref] = kernel.node_links
    assert set(kernel.node_links[ref]) == {NODE_TARGET} and kernel.links == {}
    status = ready(result)
    assert status["pods"] == {"selected": 0, "attached": 0, "failed": 0}
    assert status["ready"]["status"] == "True"
    assert "Tracepoint sched:sched_process_exec for every process" in status["ready"]["message"]
    assert status["targets"] == [{"name": NODE_TARGET, "state": ATTACHED}]


def test_a_second_pass_changes_nothing():
    kernel = FakeBackend(interfaces={"lo": 1, "eth0": 2, "eth1": 3})
    reconciler = Reconciler(kernel, FakeCgroups())
    programs = [node_scoped(TRACEPOINT), node_scoped(TC_ETH, name="tc")]
    assert not run(reconciler, programs).queued
    before = {ref: dict(links) for ref, links in kernel.node_links.items()}
    run(reconciler, programs)
    assert kernel.node_links == before and len(kernel.loads) == 2


def test_interfaces_are_matched_by_pattern_and_followed_as_they_come_and_go():
    kernel = FakeBackend(interfaces={"lo": 1, "eth0": 2, "eth1": 3, "veth9": 4})
    reconciler = Reconciler(kernel, FakeCgroups())
    result = run(reconciler, [node_scoped(TC_ETH)])
    assert targets(result) == [("eth0", ATTACHED), ("eth1", ATTACHED)]
    assert result.follows_interfaces
    assert "interfaces eth0, eth1 of this node (matching 'eth*')" in ready(result)["ready"]["message"]
    [ref] = kernel.node_links
    eth1_link = kernel.node_links[ref]["eth1"].link_id

    kernel.interfaces["eth2"] = 5  # appears
    del kernel.interfaces["eth0"]  # vanishes
    result = run(reconciler, [node_scoped(TC_ETH)])
    assert targets(result) == [("eth1", ATTACHED), ("eth2", ATTACHED)]
    assert set(kernel.node_links[ref]) == {"eth1", "eth2"}
    assert kernel.node_links[ref]["eth1"].link_id == eth1_link  # untouched

    kernel.interfaces["eth1"] = 6  # deleted and made again: a new ifindex, the old link is dead
    run(reconciler, [node_scoped(TC_ETH)])
    assert kernel.node_links[ref]["eth1"].link_id != eth1_link
    assert kernel.node_links[ref]["eth1"].target_id == 6


def test_an_exact_interface_name_matches_only_itself():
    kernel = FakeBackend(interfaces={"eth0": 2, "eth00": 3})
    result = run(Reconciler(kernel, FakeCgroups()), [node_scoped({**TC_ETH, "interface": "eth0"})])
    assert targets(result) == [("eth0", ATTACHED)]


def test_a_pattern_that_matches_nothing_is_ready_and_says_so():
    result = run(Reconciler(FakeBackend(), FakeCgroups()), [node_scoped({**TC_ETH, "interface": "bond*"})])
    assert targets(result) == []
    assert ready(result)["ready"]["status"] == "True"
    assert "no interface of this node matches 'bond*'" in ready(result)["ready"]["message"]


def test_a_failed_interface_is_a_failure_others_stay_attached():
    kernel = FakeBackend(interfaces={"eth0": 2, "eth1": 3}, refuse_targets={"eth1"})
    result = run(Reconciler(kernel, FakeCgroups()), [node_scoped({"type": "Xdp", "interface": "eth*"})])
    assert targets(result) == [("eth0", ATTACHED), ("eth1", FAILED)]
    assert result.failed
    status = ready(result)
    assert (status["ready"]["status"], status["ready"]["reason"]) == ("False", reasons.ATTACH_FAILED)
    [failure] = status["failures"]
    assert failure["reason"] == reasons.ATTACH_FAILED and failure["message"].startswith("interface eth1:")


def test_pods_programs_have_no_targets_in_status():
    kernel = FakeBackend()
    result = run(Reconciler(kernel, FakeCgroups()), [node_program()])
    assert "targets" not in ready(result)  # scope Node only


# -- the compile pool, as status shows it ---------------------------------------------------------


def pooled(kernel: FakeBackend, features=None, concurrency: int = 1) -> tuple[Reconciler, ManualStart]:
    """A reconciler whose compiles run only when the test finishes them."""
    start = ManualStart()
    pool = CompilePool(kernel.load, concurrency=concurrency, queue=CompileQueue(), start=start)
    return Reconciler(kernel, FakeCgroups({"uid-web-1"}), features, pool), start


def test_a_version_waiting_for_its_turn_is_queued_not_failed_and_the_old_one_serves():
    kernel = FakeBackend()
    reconciler, compiles = pooled(kernel)
    web = [pod("web-1", {"app": "web"})]
    first = [node_program("a", source="a1"), node_program("b", source="b1")]
    run(reconciler, first, web)
    compiles.finish_all()  # a1, then b1 once a1's slot freed
    run(reconciler, first, web)
    assert {r.name for r in kernel.programs} == {"a", "b"}
    second = [node_program("a", source="a2", generation=2), node_program("b", source="b2", generation=2)]
    result = run(reconciler, second, web)
    assert result.queued and len(compiles.jobs) == 1  # one slot: a2 compiles, b2 waits
    reports = {r.name: r for r in result.reports}
    for name in ("a-v1", "b-v1"):
        report = reports[name]
        assert report.queued is not None and report.serving_version != report.version
        assert report.pods[0].state == ATTACHED  # the old version keeps serving meanwhile
        status = report_entry(report)
        assert (status["ready"], status["reason"]) == (False, QUEUED)
        assert "waits for its turn to compile" in status["message"] and "keeps running" in status["message"]
        assert "failures" not in status
    assert reports["a-v1"].queued == 0 and reports["b-v1"].queued == 1

    compiles.finish_all()
    result = run(reconciler, second, web)
    assert not result.queued and all(r.queued is None for r in result.reports)
    assert {r.version for r in kernel.programs} == {r.version for r in result.reports}
    assert len(kernel.programs) == 2  # the old versions were unloaded


def test_a_tenant_flooding_its_namespace_does_not_hold_up_another_tenant():
    kernel = FakeBackend()
    reconciler, compiles = pooled(kernel, concurrency=2)
    flood = [node_program(f"f{i}", namespace="flood", source=f"s{i}") for i in range(10)]
    programs = [*flood, node_program("mine", namespace="quiet"), node_scoped(TRACEPOINT)]
    result = run(reconciler, programs)
    started = {(ref.namespace, ref.name) for ref in reconciler.pool.started}
    assert started == {("flood", "f0"), ("quiet", "mine")}
    assert result.queued
    compiles.finish_one()  # f0's slot goes to the cluster program, not to the flood's next
    assert reconciler.pool.started[-1].program == ("_cluster", "admin")
    compiles.finish_all()
    run(reconciler, programs)
    assert len(kernel.programs) == 12


def test_an_unsupported_program_costs_no_turn():
    class NoTracepoints:
        def unsupported(self, api_type: str) -> str | None:
            return "no tracefs" if api_type == "Tracepoint" else None

    kernel = FakeBackend()
    reconciler, compiles = pooled(kernel, NoTracepoints())
    tracer = node_program("tracer", attach=TRACEPOINT)
    result = run(reconciler, [tracer, node_program("counter")])
    assert [r.name for r in reconciler.pool.started] == ["counter"]
    assert {r.name: r.build_error is not None for r in result.reports} == {
        "tracer-v1": True,
        "counter-v1": False,
    }
    compiles.finish_all()
    result = run(reconciler, [tracer, node_program("counter")])
    assert [r.name for r in kernel.loads] == ["counter"] and not result.queued
