"""One failing detach or unload never aborts the pass, and an entry the agent cannot read never
unloads what runs of it. The kernel is the in-memory fake, with failures injected."""

from __future__ import annotations

from bpfleet_api import names, reasons
from node_agent.model import EntryKey, Pod, Trust
from node_agent.reconcile import ATTACHED, PassResult, Reconciler
from tests.unit.agent_harness import Node
from tests.unit.builders import cluster_program, node_program, parsed, pod, report_entry
from tests.unit.fakes import FakeBackend, FakeCgroups

TRUST = Trust("bpfleet-system")
WEB = {"app": "web"}


def run(reconciler: Reconciler, programs: list[dict], pods: list[dict]) -> PassResult:
    """One pass, or as many as the compile queue needs to build every version."""
    while True:
        result = reconciler.run([parsed(p, TRUST) for p in programs], [Pod.from_object(p) for p in pods])
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
    status = report_entry(result.reports[0])
    [failure] = status["failures"]
    assert failure["reason"] == reasons.DETACH_FAILED and "uid-web-1" in failure["message"]
    assert (status["ready"], status["reason"]) == (False, reasons.DETACH_FAILED)
    kernel.refuse_detach.clear()
    result = run(reconciler, [node_program(), node_program("other")], gone)
    assert linked(kernel) == set() and not result.failed
    assert "failures" not in report_entry(result.reports[0])


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


def web_node() -> Node:
    return Node(pods=[pod("web-1", WEB)], cgroups={"uid-web-1"})


def broken(version: dict, drop: str) -> dict:
    """Version 2 of the program, without `drop` in its spec: a shape this agent cannot read (a
    newer operator's, say)."""
    version["metadata"]["name"] = version["metadata"]["name"].replace("-v1", "-v2")
    del version["spec"][drop]
    return version


def test_an_unreadable_spec_keeps_the_last_good_version_running_and_says_invalid_spec():
    node = web_node()
    node.serve(node_program())
    node.reconcile()
    before = (dict(node.kernel.programs), {ref: dict(links) for ref, links in node.kernel.links.items()})
    assert linked(node.kernel) == {("counter", "uid-web-1")}
    node.serve(broken(node_program(), "source"))
    node.reconcile()
    node.reconcile()
    assert (node.kernel.programs, node.kernel.links) == before  # nothing unloaded, nothing detached
    entry = node.entry("counter")
    [failure] = entry["failures"]
    assert failure["reason"] == reasons.INVALID_SPEC and "keeps running" in failure["message"]
    assert entry["reason"] == reasons.INVALID_SPEC and entry["servingVersion"] == "counter-v1"


def test_an_unknown_attach_type_keeps_what_runs_too():
    node = web_node()
    node.serve(node_program())
    node.reconcile()
    newer = node_program(attach={"type": "SomethingNewer"})
    newer["metadata"]["name"] = "counter-v2"
    node.serve(newer)
    node.reconcile()
    assert linked(node.kernel) == {("counter", "uid-web-1")}


def test_an_unreadable_entry_removed_from_spec_is_unloaded():
    node = web_node()
    node.serve(node_program())
    node.reconcile()
    node.serve(broken(node_program(), "function"))
    node.reconcile()
    assert node.kernel.programs
    node.serve()
    node.reconcile()
    assert node.kernel.programs == {} and node.kernel.links == {}
    assert node.status["programs"] == []


def test_an_unreadable_entry_cannot_hold_another_namespaces_program():
    node = web_node()
    node.serve(node_program())
    node.reconcile()
    # Another namespace's unreadable entry naming the same program: it holds nothing of shop's.
    node.serve(broken(node_program(namespace="evil"), "function"))
    node.reconcile()
    assert node.kernel.programs == {}
    # Nor does an entry of a cluster kind whose version is unreadable hold a tenant's pins.
    node.serve(node_program())
    node.reconcile()
    admin = cluster_program("counter", scope="Node", attach={"type": "Nope"})
    node.serve(admin)
    node.reconcile()
    assert node.kernel.programs == {}
    assert node.agent.versions.read([]).held == set()


def test_held_pins_are_the_entrys_own():
    assert EntryKey(names.PROGRAM_KIND, "shop", "p").pins == ("shop", "p")
    assert EntryKey(names.CLUSTER_PROGRAM_KIND, "", "p").pins == (names.CLUSTER_PIN_NAMESPACE, "p")
