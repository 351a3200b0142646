"""One failing detach or unload never aborts the pass, and a node object the agent cannot read
never unloads what runs of it. The kernel is the in-memory fake, with failures injected."""

from __future__ import annotations

from typing import Any

from kubernetes.client import ApiClient

from bpfleet_api import names, reasons
from node_agent.agent import Agent
from node_agent.model import NodeProgram, Pod, Trust
from node_agent.reconcile import ATTACHED, PassResult, Reconciler
from node_agent.status import node_program_status
from tests.unit.builders import cluster_program, node_program, pod
from tests.unit.fakes import FakeBackend, FakeCgroups
from tests.unit.test_agent_objects import Listed, Recorder

TRUST = Trust("bpfleet-system")
WEB = {"app": "web"}


def run(reconciler: Reconciler, programs: list[dict], pods: list[dict]) -> PassResult:
    """One pass, or as many as the compile queue needs to build every version."""
    while True:
        result = reconciler.run(
            [NodeProgram.from_object(p, TRUST) for p in programs], [Pod.from_object(p) for p in pods]
        )
        if not result.queued:
            return result


def linked(kernel: FakeBackend) -> set[tuple[str, str]]:
    return {(ref.name, uid) for ref, links in kernel.links.items() for uid in links}


def test_a_failing_detach_is_reported_and_the_other_detaches_still_happen():
    kernel, cgroups = FakeBackend(refuse_detach={"uid-web-1"}), FakeCgroups({"uid-web-1", "uid-web-2"})
    reconciler = Reconciler(kernel, cgroups)
    pods = [pod("web-1", WEB), pod("web-2", WEB)]
    run(reconciler, [node_program(), node_program("other")], pods)
    gone = [pod("web-1", {"app": "db"}), pod("web-2", {"app": "db"})]
    result = run(reconciler, [node_program(), node_program("other")], gone)
    # Both programs' detaches ran: only the one the kernel refused is left.
    assert linked(kernel) == {("counter", "uid-web-1"), ("other", "uid-web-1")}
    assert result.failed  # retried at the failure pace
    status = node_program_status(result.reports[0], "node-a", None)
    [failure] = status["failures"]
    assert failure["reason"] == reasons.DETACH_FAILED and "uid-web-1" in failure["message"]
    [ready] = status["conditions"]
    assert (ready["status"], ready["reason"]) == ("False", reasons.DETACH_FAILED)
    kernel.refuse_detach.clear()
    result = run(reconciler, [node_program(), node_program("other")], gone)
    assert linked(kernel) == set() and not result.failed
    assert node_program_status(result.reports[0], "node-a", None)["failures"] == []


def test_a_failing_unload_leaves_the_other_unloads_and_attaches_to_run():
    kernel, cgroups = FakeBackend(), FakeCgroups({"uid-web-1"})
    reconciler = Reconciler(kernel, cgroups)
    run(reconciler, [node_program(), node_program("other")], [pod("web-1", WEB)])
    [old_counter] = [r for r in kernel.programs if r.name == "counter"]
    [old_other] = [r for r in kernel.programs if r.name == "other"]
    kernel.refuse_unload.add(old_counter)
    new = [node_program(source="int f(void *c) { return 0; }"), node_program("other", source="int g;")]
    result = run(reconciler, new, [pod("web-1", WEB)])
    assert old_counter in kernel.programs and old_other not in kernel.programs
    assert len(kernel.programs) == 3  # both new versions loaded, the refused old one lingers
    counter = result.reports[0]
    assert [(p.name, p.state) for p in counter.pods] == [("web-1", ATTACHED)]
    (reason, message), *_ = counter.cleanup_failures
    assert reason == reasons.DETACH_FAILED and old_counter.version in message
    assert result.reports[1].cleanup_failures == []


def test_a_deleting_program_whose_unload_fails_keeps_its_finalizer_until_it_is_gone():
    kernel, cgroups = FakeBackend(), FakeCgroups({"uid-web-1"})
    reconciler = Reconciler(kernel, cgroups)
    run(reconciler, [node_program()], [pod("web-1", WEB)])
    [loaded] = list(kernel.programs)
    kernel.refuse_unload.add(loaded)
    [report] = run(reconciler, [node_program(deleting=True)], [pod("web-1", WEB)]).reports
    assert not report.detached and loaded in kernel.programs  # still there: not released
    kernel.refuse_unload.clear()
    [report] = run(reconciler, [node_program(deleting=True)], [pod("web-1", WEB)]).reports
    assert report.detached and loaded not in kernel.programs


def test_a_failing_detach_of_a_host_interface_does_not_stop_the_pass():
    kernel = FakeBackend(interfaces={"eth0": 2, "eth1": 3}, refuse_detach={"eth0"})
    reconciler = Reconciler(kernel, FakeCgroups({"uid-web-1"}))
    tc = {"type": "Tc", "direction": "Ingress", "interface": "eth*"}
    programs = [cluster_program(scope="Node", attach=tc), node_program()]
    run(reconciler, programs, [pod("web-1", WEB)])
    del kernel.interfaces["eth0"], kernel.interfaces["eth1"]
    result = run(reconciler, programs, [pod("web-1", WEB)])
    [links] = kernel.node_links.values()
    assert set(links) == {"eth0"}  # eth1's detach ran after eth0's failed
    assert result.failed and result.reports[0].cleanup_failures
    assert linked(kernel) == {("counter", "uid-web-1")}


def test_a_failing_attach_raising_os_error_is_one_pods_failure():
    class Flaky(FakeBackend):
        def attach(self, ref, pod_uid, cgroup_dir, attach, *, container_id=""):
            if pod_uid == "uid-web-1":
                raise FileNotFoundError(2, "No such file or directory", str(cgroup_dir))
            return super().attach(ref, pod_uid, cgroup_dir, attach, container_id=container_id)

    kernel = Flaky()
    result = run(
        Reconciler(kernel, FakeCgroups({"uid-web-1", "uid-web-2"})),
        [node_program()],
        [
            pod("web-1", WEB),
            pod("web-2", WEB),
        ],
    )
    [report] = result.reports
    assert [(p.name, p.state, p.reason) for p in report.pods] == [
        ("web-1", "Failed", reasons.ATTACH_FAILED),
        ("web-2", ATTACHED, ""),
    ]


def agent_with(kernel: FakeBackend, objects: list[dict[str, Any]]) -> Agent:
    agent = Agent(ApiClient(), "node-a", Reconciler(kernel, FakeCgroups({"uid-web-1"})), trust=TRUST)
    agent.programs, agent.pods = Listed(objects), Listed([pod("web-1", WEB)])  # type: ignore[assignment]
    agent.custom = Recorder()  # type: ignore[assignment]
    return agent


def test_an_unreadable_spec_keeps_the_last_good_version_running_and_says_invalid_spec():
    kernel = FakeBackend()
    good = node_program()
    agent = agent_with(kernel, [good])
    agent.reconcile_once()
    before = (dict(kernel.programs), {ref: dict(links) for ref, links in kernel.links.items()})
    assert linked(kernel) == {("counter", "uid-web-1")}
    del good["spec"]["source"]  # a shape this agent cannot read (a newer operator, say)
    good["metadata"]["resourceVersion"] = "2"
    agent.reconcile_once()
    agent.reconcile_once()
    assert (kernel.programs, kernel.links) == before  # nothing unloaded, nothing detached
    status = agent.custom.status[("shop", "counter-node-a")]
    [failure] = status["failures"]
    assert failure["reason"] == reasons.INVALID_SPEC and "keeps running" in failure["message"]
    assert status["conditions"][0]["reason"] == reasons.INVALID_SPEC


def test_an_unknown_attach_type_keeps_what_runs_too():
    kernel = FakeBackend()
    program = node_program()
    agent = agent_with(kernel, [program])
    agent.reconcile_once()
    program["spec"]["attach"] = {"type": "SomethingNewer"}
    agent.reconcile_once()
    assert linked(kernel) == {("counter", "uid-web-1")}


def test_an_unreadable_spec_being_deleted_is_unloaded_and_released():
    kernel = FakeBackend()
    program = node_program()
    agent = agent_with(kernel, [program])
    agent.reconcile_once()
    program["spec"]["source"] = None
    program["metadata"]["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    agent.reconcile_once()
    assert kernel.programs == {} and kernel.links == {}
    assert agent.custom.metadata[("shop", "counter-node-a")]["finalizers"] == []


def test_an_unreadable_object_cannot_hold_another_namespaces_program():
    kernel = FakeBackend()
    victim = node_program()
    agent = agent_with(kernel, [victim])
    agent.reconcile_once()
    # Another namespace's unreadable object naming the same program: it holds nothing of shop's.
    forged = node_program(namespace="evil")
    del forged["spec"]["function"]
    agent.programs = Listed([forged])  # type: ignore[assignment]
    agent.reconcile_once()
    assert kernel.programs == {}
    # Nor does a forged cluster kind outside the system namespace hold the cluster's pins.
    admin = cluster_program(scope="Node", attach={"type": "Tracepoint", "name": "sched:sched_process_exec"})
    agent.programs = Listed([admin])  # type: ignore[assignment]
    agent.reconcile_once()
    assert [r.namespace for r in kernel.programs] == [names.CLUSTER_PIN_NAMESPACE]
    forged_admin = cluster_program(namespace="evil", scope="Node", attach={"type": "Nope"})
    agent.programs = Listed([forged_admin])  # type: ignore[assignment]
    agent.reconcile_once()
    assert kernel.programs == {}
