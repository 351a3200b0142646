"""The agent's desired-vs-actual logic against an in-memory kernel."""

from __future__ import annotations

import pytest

from bpfleet_api import reasons
from node_agent import errors
from node_agent.model import Pod
from node_agent.reconcile import ATTACHED, FAILED, WAITING, Reconciler
from tests.unit.builders import cluster_program, node_program, parsed, pod
from tests.unit.fakes import FakeBackend, FakeCgroups

WEB = {"app": "web"}


@pytest.fixture
def kernel() -> FakeBackend:
    return FakeBackend()


@pytest.fixture
def cgroups() -> FakeCgroups:
    return FakeCgroups()


def run(reconciler: Reconciler, programs: list[dict], pods: list[dict]):
    return reconciler.run([parsed(p) for p in programs], [Pod.from_object(p) for p in pods])


def attached_uids(kernel: FakeBackend) -> set[str]:
    return {uid for links in kernel.links.values() for uid, link in links.items() if link.live}


def test_attaches_only_selected_pods(kernel, cgroups):
    cgroups.present |= {"uid-web-1", "uid-web-2", "uid-db-1"}
    pods = [pod("web-1", WEB), pod("web-2", WEB), pod("db-1", {"app": "db"})]
    result = run(Reconciler(kernel, cgroups), [node_program()], pods)
    assert attached_uids(kernel) == {"uid-web-1", "uid-web-2"}
    [report] = result.reports
    assert [(p.name, p.state) for p in report.pods] == [("web-1", ATTACHED), ("web-2", ATTACHED)]
    assert not result.waiting


def test_pods_of_other_namespaces_are_never_selected(kernel, cgroups):
    cgroups.present |= {"uid-web-1"}
    run(Reconciler(kernel, cgroups), [node_program(selector={})], [pod("web-1", WEB, namespace="other")])
    assert attached_uids(kernel) == set()


def test_compiles_once_for_many_pods_and_many_passes(kernel, cgroups):
    pods = [pod(f"web-{i}", WEB) for i in range(20)]
    cgroups.present |= {p["metadata"]["uid"] for p in pods}
    reconciler = Reconciler(kernel, cgroups)
    for _ in range(3):
        run(reconciler, [node_program()], pods)
    assert len(kernel.loads) == 1
    assert len(attached_uids(kernel)) == 20


def test_second_pass_changes_nothing(kernel, cgroups):
    cgroups.present |= {"uid-web-1"}
    reconciler = Reconciler(kernel, cgroups)
    run(reconciler, [node_program()], [pod("web-1", WEB)])
    before = {ref: dict(links) for ref, links in kernel.links.items()}
    run(reconciler, [node_program()], [pod("web-1", WEB)])
    assert kernel.links == before


def test_detaches_pods_that_stop_matching_or_go_away(kernel, cgroups):
    cgroups.present |= {"uid-web-1", "uid-web-2"}
    reconciler = Reconciler(kernel, cgroups)
    run(reconciler, [node_program()], [pod("web-1", WEB), pod("web-2", WEB)])
    run(reconciler, [node_program()], [pod("web-1", {"app": "other"})])
    assert attached_uids(kernel) == set()


def test_terminating_and_finished_pods_are_detached(kernel, cgroups):
    cgroups.present |= {"uid-a", "uid-b"}
    reconciler = Reconciler(kernel, cgroups)
    run(reconciler, [node_program()], [pod("a", WEB), pod("b", WEB)])
    run(reconciler, [node_program()], [pod("a", WEB, deleting=True), pod("b", WEB, phase="Succeeded")])
    assert attached_uids(kernel) == set()


def test_pending_pod_without_cgroup_waits_then_attaches(kernel, cgroups):
    reconciler = Reconciler(kernel, cgroups)
    result = run(reconciler, [node_program()], [pod("web-1", WEB, phase="Pending")])
    assert result.waiting
    assert result.reports[0].pods[0].state == WAITING
    cgroups.present.add("uid-web-1")
    result = run(reconciler, [node_program()], [pod("web-1", WEB, phase="Pending")])
    assert result.reports[0].pods[0].state == ATTACHED
    assert not result.waiting


def test_running_pod_without_cgroup_is_a_failure(kernel, cgroups):
    result = run(Reconciler(kernel, cgroups), [node_program()], [pod("web-1", WEB)])
    [state] = result.reports[0].pods
    assert (state.state, state.reason) == (FAILED, reasons.POD_CGROUP_NOT_FOUND)
    assert "under /cgroup" in state.message and "BPFLEET_KUBELET_CGROUP_ROOT" in state.message
    assert result.failed and not result.waiting  # retried, but not at the pace of a starting pod


def test_attach_refused_fails_that_pod_only(kernel, cgroups):
    cgroups.present |= {"uid-web-1", "uid-web-2"}
    kernel.refuse_attach.add("uid-web-1")
    result = run(Reconciler(kernel, cgroups), [node_program()], [pod("web-1", WEB), pod("web-2", WEB)])
    states = {p.name: (p.state, p.reason) for p in result.reports[0].pods}
    assert states == {"web-1": (FAILED, reasons.ATTACH_FAILED), "web-2": (ATTACHED, "")}


def test_defunct_link_of_a_recreated_cgroup_is_replaced(kernel, cgroups):
    cgroups.present |= {"uid-web-1"}
    reconciler = Reconciler(kernel, cgroups)
    run(reconciler, [node_program()], [pod("web-1", WEB)])
    kernel.cgroup_removed("uid-web-1")
    run(reconciler, [node_program()], [pod("web-1", WEB)])
    assert attached_uids(kernel) == {"uid-web-1"}


def test_build_failure_is_reported_and_others_keep_running(kernel, cgroups):
    cgroups.present |= {"uid-web-1"}
    kernel.broken_sources["broken"] = errors.CompileError("program.c:1:1: error: nope")
    reconciler = Reconciler(kernel, cgroups)
    programs = [node_program("good"), node_program("bad", source="broken")]
    result = run(reconciler, programs, [pod("web-1", WEB)])
    reports = {r.name: r for r in result.reports}
    assert isinstance(reports["bad-v1"].build_error, errors.CompileError)
    assert reports["good-v1"].pods[0].state == ATTACHED
    # A failed version is not compiled again on every pass.
    run(reconciler, programs, [pod("web-1", WEB)])
    assert [ref.name for ref in kernel.loads].count("bad") == 1


def test_failed_rollout_keeps_the_previous_version_running(kernel, cgroups):
    cgroups.present |= {"uid-web-1"}
    kernel.broken_sources["v2"] = errors.VerifierRejected("R1 invalid mem access 'scalar'")
    reconciler = Reconciler(kernel, cgroups)
    run(reconciler, [node_program(source="v1")], [pod("web-1", WEB)])
    [v1] = kernel.programs
    result = run(reconciler, [node_program(source="v2", generation=2)], [pod("web-1", WEB)])
    [report] = result.reports
    assert report.build_error is not None
    assert report.serving_version == v1.version != report.version
    assert list(kernel.programs) == [v1]
    assert attached_uids(kernel) == {"uid-web-1"}


def test_new_version_replaces_the_old_one(kernel, cgroups):
    cgroups.present |= {"uid-web-1"}
    reconciler = Reconciler(kernel, cgroups)
    run(reconciler, [node_program(source="v1")], [pod("web-1", WEB)])
    run(reconciler, [node_program(source="v2", generation=2)], [pod("web-1", WEB)])
    [only] = kernel.programs
    assert only.version == parsed(node_program(source="v2")).ref.version
    assert set(kernel.links[only]) == {"uid-web-1"}


def test_a_program_no_entry_asks_for_is_unloaded(kernel, cgroups):
    cgroups.present |= {"uid-web-1"}
    reconciler = Reconciler(kernel, cgroups)
    run(reconciler, [node_program()], [pod("web-1", WEB)])
    assert kernel.programs
    result = run(reconciler, [], [pod("web-1", WEB)])
    assert kernel.programs == {} and kernel.links == {}
    assert result.reports == []


def test_programs_loaded_before_a_restart_are_adopted_not_reloaded(kernel, cgroups):
    cgroups.present |= {"uid-web-1"}
    run(Reconciler(kernel, cgroups), [node_program()], [pod("web-1", WEB)])
    links_before = {ref: dict(links) for ref, links in kernel.links.items()}
    run(Reconciler(kernel, cgroups), [node_program()], [pod("web-1", WEB)])  # a fresh agent
    assert len(kernel.loads) == 1
    assert kernel.links == links_before


def test_an_entry_removed_from_spec_unloads_its_program_and_nothing_else(kernel, cgroups):
    cgroups.present |= {"uid-web-1", "uid-web-2"}
    reconciler = Reconciler(kernel, cgroups)
    other = node_program("other", source="int g;")
    pods = [pod("web-1", WEB), pod("web-2", WEB)]
    run(reconciler, [node_program(), other], pods)
    assert sorted(ref.name for ref in kernel.programs) == ["counter", "other"]
    others = {ref: dict(links) for ref, links in kernel.links.items() if ref.name == "other"}
    result = run(reconciler, [other], pods)
    assert [ref.name for ref in kernel.programs] == ["other"]
    assert {ref: dict(links) for ref, links in kernel.links.items() if links} == others
    assert [r.name for r in result.reports] == ["other-v1"]  # the program that went has no report


class NoKprobes:
    def unsupported(self, api_type: str) -> str | None:
        return "kprobes are not available on this kernel" if api_type.startswith("K") else None


def test_unsupported_attach_type_fails_on_this_node_without_compiling(kernel, cgroups):
    cgroups.present |= {"uid-web-1"}
    kprobe = cluster_program("probe", attach={"type": "Kprobe", "function": "do_sys_openat2"})
    reconciler = Reconciler(kernel, cgroups, NoKprobes())
    result = run(reconciler, [kprobe, node_program("counter")], [pod("web-1", WEB)])
    reports = {r.name: r for r in result.reports}
    error = reports["probe-v1"].build_error
    assert isinstance(error, errors.UnsupportedOnNode)
    assert error.reason == reasons.UNSUPPORTED_ON_NODE
    assert "kprobes are not available" in str(error)
    assert [ref.name for ref in kernel.loads] == ["counter"]
    assert reports["counter-v1"].pods[0].state == ATTACHED
