"""What the agent does with its EbpfNodeState and the versions it names: which entries it serves,
which it refuses and how it says so, what it writes. The API is a recorder; the kernel the fake."""

from __future__ import annotations

from bpfleet_api import names, reasons
from node_agent.agent import Agent
from node_agent.compile_pool import CompilePool
from node_agent.kernel.backend import ProgramBuild, ProgramRef
from node_agent.reconcile import PassResult, Reconciler
from node_agent.status import UNLOADING, serving_version
from tests.unit.agent_harness import Node
from tests.unit.builders import cluster_program, hashed, node_program, parsed, pod
from tests.unit.fakes import FakeBackend, FakeCgroups, ManualStart, offline_api

WEB = {"app": "web"}
TRACEPOINT = {"type": "Tracepoint", "name": "sched:sched_process_exec"}


def web_node(**kwargs) -> Node:
    return Node(pods=[pod("web-1", WEB)], cgroups={"uid-web-1"}, **kwargs)


def linked(node: Node) -> set[tuple[str, str]]:
    return {(ref.name, uid) for ref, links in node.kernel.links.items() for uid in links}


def test_the_watch_selects_this_nodes_state_by_name():
    long_node = "ip-10-0-0-1." + "very-long-domain-" * 4 + "example.com"
    agent = Agent(offline_api(), long_node, Reconciler(FakeBackend(), FakeCgroups()))
    assert agent.programs.path.endswith(f"/{names.NODE_STATE_PROGRAMS_PLURAL}")
    assert agent.programs.selectors == {"fieldSelector": f"metadata.name={long_node}"}


def test_a_program_is_served_and_reported_in_one_entry():
    node = web_node()
    node.serve(node_program(generation=3))
    node.reconcile()
    assert linked(node) == {("counter", "uid-web-1")}
    [(_, status)] = node.api.writes
    assert status["observedGeneration"] == 1
    [entry] = status["programs"]
    assert {k: entry[k] for k in ("kind", "namespace", "name", "version", "generation")} == {
        "kind": names.PROGRAM_KIND,
        "namespace": "shop",
        "name": "counter",
        "version": "counter-v1",
        "generation": 3,
    }
    assert (entry["ready"], entry["reason"], serving_version(entry)) == (True, "Attached", "counter-v1")
    # Said by their absence: the version runs, nothing failed, the counts say all pods are attached.
    assert "servingVersion" not in entry and "failures" not in entry and "message" not in entry
    assert entry["pods"] == {"selected": 1, "attached": 1, "failed": 0}
    assert entry["programId"] and "podStates" not in entry


def test_an_entry_not_ready_on_its_pods_says_why_in_its_message():
    node = Node(pods=[pod("web-1", WEB)], cgroups=set())  # the pod has no cgroup yet
    node.serve(node_program())
    node.reconcile()
    [(_, status)] = node.api.writes
    [entry] = status["programs"]
    assert (entry["ready"], entry["reason"]) == (False, "AttachFailed")
    assert entry["message"] == "1 of 1 pods failed"


def test_one_status_write_per_pass_and_none_when_nothing_changed():
    kernel, start = FakeBackend(), ManualStart()
    node = web_node(kernel=kernel, pool=CompilePool(kernel.load, start=start))
    node.agent.hold.queued_seconds = 0  # queued builds reported at once (see the hold's tests)
    node.serve(node_program(), node_program("other"), cluster_program(scope="Node", attach=TRACEPOINT))
    assert node.reconcile().queued  # two compile at a time: the third waits its turn
    assert len(node.api.writes) == 1 and len(node.status["programs"]) == 3
    assert node.entry("other")["reason"] == "Queued"
    start.finish_all()
    node.reconcile()
    assert len(node.api.writes) == 2 and node.entry("other")["ready"]
    node.reconcile()
    node.reconcile()
    assert len(node.api.writes) == 2


def test_a_quick_build_is_reported_once_attached_not_queued_then_attached():
    kernel, start = FakeBackend(), ManualStart()
    node = web_node(kernel=kernel, pool=CompilePool(kernel.load, start=start))
    node.serve(node_program())
    result = node.reconcile()
    assert result.queued and node.api.writes == []  # held: its only news is a queued build
    assert node.agent._next_pass_in(result) <= node.agent.hold.queued_seconds
    start.finish_all()
    node.reconcile()
    [(_, written)] = node.api.writes
    assert [e["ready"] for e in written["programs"]] == [True]


def test_a_slow_build_is_reported_queued_once_the_hold_is_over(monkeypatch):
    kernel, start = FakeBackend(), ManualStart()
    node = web_node(kernel=kernel, pool=CompilePool(kernel.load, start=start))
    node.serve(node_program())
    clock = [1000.0]
    monkeypatch.setattr("node_agent.agent.time.monotonic", lambda: clock[0])
    node.reconcile()
    clock[0] += node.agent.hold.queued_seconds / 2
    node.reconcile()
    assert node.api.writes == []
    clock[0] += node.agent.hold.queued_seconds / 2
    node.reconcile()
    assert [e["reason"] for e in node.status["programs"]] == ["Queued"]
    start.finish_all()
    node.reconcile()
    assert len(node.api.writes) == 2 and node.entry("counter")["ready"]


def test_news_other_than_queued_builds_is_never_held():
    kernel, start = FakeBackend(), ManualStart()
    node = web_node(kernel=kernel, pool=CompilePool(kernel.load, start=start))
    node.serve(node_program())
    node.reconcile()
    start.finish_all()
    node.reconcile()  # attached, written
    node.serve(node_program(), node_program("other"))
    node.reconcile()  # only a queued build is new: held
    assert len(node.api.writes) == 1
    node.serve(node_program("other"))  # and counter leaves the spec, unloaded: news, written at once
    node.reconcile()
    assert len(node.api.writes) == 2
    assert {e["name"]: e["reason"] for e in node.status["programs"]} == {"other": "Queued"}


def test_versions_are_read_once_they_never_change():
    node = web_node()
    node.serve(node_program(), node_program("other"))
    for _ in range(3):
        node.reconcile()
    assert sorted(node.api.reads) == [("shop", "counter-v1"), ("shop", "other-v1")]


def test_a_state_addressed_to_another_node_is_ignored_and_keeps_what_runs():
    node = web_node()
    node.serve(node_program())
    node.reconcile()
    node.states[0]["spec"]["nodeName"] = "node-b"
    node.states[0]["spec"]["programs"] = []
    node.reconcile()
    assert linked(node) == {("counter", "uid-web-1")} and len(node.api.writes) == 1


def test_no_state_yet_is_not_known_yet_and_unloads_nothing():
    node = web_node()
    node.serve(node_program())
    node.reconcile()
    node.states.clear()
    node.reconcile()
    assert linked(node) == {("counter", "uid-web-1")}


def test_no_state_and_no_node_any_more_unloads_everything():
    node = web_node()
    node.serve(node_program())
    node.reconcile()
    node.states.clear()  # the Node was deleted while the agent was down: its state went with it
    node.core.gone = True
    node.reconcile()
    assert linked(node) == set() and node.kernel.programs == {}


def test_orphans_are_unloaded_whatever_they_belong_to():
    kernel = FakeBackend()
    build = parsed(node_program()).build
    kernel.load(ProgramRef("bank", "left-over", "0123"), build)
    kernel.load(ProgramRef(names.CLUSTER_PIN_NAMESPACE, "old-admin", "4567"), build)
    node = web_node(kernel=kernel)  # an agent starting on a node that ran them
    node.serve(node_program())
    node.reconcile()
    assert [(r.namespace, r.name) for r in kernel.programs] == [("shop", "counter")]


def test_a_cluster_entrys_version_is_read_from_the_system_namespace_only():
    node = web_node()
    forged = cluster_program(namespace="shop", scope="Node", attach=TRACEPOINT)  # a tenant's copy
    node.serve(forged)
    node.reconcile()
    assert node.api.reads == [("bpfleet-system", "admin-v1")]  # never shop's
    assert node.kernel.programs == {}
    entry = node.entry("admin")
    assert (entry["namespace"], entry["reason"]) == ("", reasons.SOURCE_NOT_FOUND)


def test_a_tenant_entry_naming_a_cluster_kind_version_is_refused():
    node = web_node()
    forged = cluster_program(namespace="shop", scope="Node", attach=TRACEPOINT)
    node.serve(forged)
    # An entry of an EbpfProgram in shop whose version says it is a ClusterEbpfProgram.
    node.states[0]["spec"]["programs"] = [
        {
            "kind": names.PROGRAM_KIND,
            "namespace": "shop",
            "name": "admin",
            "generation": 1,
            "version": "admin-v1",
        }
    ]
    node.reconcile()
    assert node.kernel.programs == {}
    entry = node.entry("admin")
    assert entry["reason"] == reasons.INVALID_SPEC and "ClusterEbpfProgram" in entry["message"]
    assert "keeps running" not in entry["message"]


def test_a_refused_tenant_program_stops_running_and_says_why():
    node = web_node()
    node.serve(node_program())
    node.reconcile()
    assert len(node.kernel.programs) == 1
    kprobe = node_program(attach={"type": "Kprobe", "function": "do_sys_openat2"})  # the API let it by
    kprobe["metadata"]["name"] = "counter-v2"
    node.serve(kprobe)
    node.reconcile()
    assert node.kernel.programs == {}
    entry = node.entry("counter")
    assert "Kprobe" in entry["message"] and "use a ClusterEbpfProgram" in entry["message"]
    assert entry["servingVersion"] == "" and entry["pods"]["attached"] == 0  # nothing runs


def test_a_cluster_program_in_the_system_namespace_is_served():
    node = web_node()
    node.serve(cluster_program(scope="Node", attach=TRACEPOINT))
    node.reconcile()
    [ref] = node.kernel.programs
    assert ref.namespace == "_cluster"
    entry = node.entry("admin")
    assert entry["ready"] and entry["targets"] == [{"name": "node", "state": "Attached"}]


def newer(version: dict, **spec) -> dict:
    """Version 2 of the same program, with these spec fields changed."""
    version["metadata"]["name"] = version["metadata"]["name"].replace("-v1", "-v2")
    version["spec"].update(spec)
    return version


def test_a_missing_version_keeps_what_runs_and_says_source_not_found():
    node = web_node()
    node.serve(node_program())
    node.reconcile()
    node.serve(newer(node_program(), source={"text": "int f;", "sha256": "y"}), store=False)
    result = node.reconcile()
    assert linked(node) == {("counter", "uid-web-1")}
    entry = node.entry("counter")
    assert (entry["version"], entry["reason"], entry["ready"]) == (
        "counter-v2",
        reasons.SOURCE_NOT_FOUND,
        False,
    )
    assert entry["servingVersion"] == "counter-v1" and entry["pods"]["attached"] == 1
    assert node.agent._next_pass_in(result) == 1.0  # no watch tells when it appears: look again soon


def test_a_version_that_does_not_match_its_hash_is_refused_and_what_runs_keeps_running():
    node = web_node()
    node.serve(node_program())
    node.reconcile()
    tampered = hashed(newer(node_program()))
    node.serve(tampered)
    tampered["spec"]["source"] = {"text": "int f(void *c) { return 0; }", "sha256": "z"}  # after hashing
    node.reconcile()
    assert linked(node) == {("counter", "uid-web-1")}
    assert len(node.kernel.loads) == 1  # never compiled
    entry = node.entry("counter")
    assert entry["reason"] == reasons.INVALID_SPEC and "does not match its hash" in entry["message"]


def test_an_unreachable_api_says_nothing_new_and_keeps_what_runs():
    node = web_node()
    node.serve(node_program())
    node.reconcile()
    before = dict(node.entry("counter"))
    node.api.down = True
    node.serve(newer(node_program(), source={"text": "int f;", "sha256": "y"}))
    node.agent.versions._cache.clear()
    node.reconcile()
    assert linked(node) == {("counter", "uid-web-1")}
    assert node.entry("counter") == before


def test_an_entry_removed_from_spec_stays_unloading_until_the_kernel_shows_it_gone():
    node = web_node()
    node.serve(node_program(), node_program("other"))
    node.reconcile()
    [counter] = [r for r in node.kernel.programs if r.name == "counter"]
    node.kernel.refuse_unload.add(counter)
    node.serve(node_program("other"))
    node.reconcile()
    entry = node.entry("counter")
    assert (entry["ready"], entry["reason"]) == (False, UNLOADING) and counter in node.kernel.programs
    node.kernel.refuse_unload.clear()
    node.reconcile()
    assert [e["name"] for e in node.status["programs"]] == ["other"]
    assert counter not in node.kernel.programs


def test_queued_compiles_never_make_passes_spin_a_finished_compile_wakes_one():
    kernel, start = FakeBackend(), ManualStart()
    node = web_node(kernel=kernel, pool=CompilePool(kernel.load, start=start))
    node.agent.hold.queued_seconds = 0  # no held status, whose end is a pass of its own
    node.serve(node_program())
    result = node.reconcile()
    assert result.queued and len(start.jobs) == 1 and kernel.programs == {}
    agent = node.agent
    assert agent._next_pass_in(result) == agent.resync  # the pool says when, not a timer
    assert not agent._wake.is_set()
    start.finish_one()
    assert agent._wake.is_set() and len(kernel.programs) == 1
    assert not node.reconcile().queued


def test_the_next_pass_comes_at_the_interface_recheck_or_the_resync():
    agent = web_node().agent
    assert agent._next_pass_in(PassResult([], waiting=False, follows_interfaces=True)) == 5.0
    assert agent._next_pass_in(PassResult([], waiting=False)) == agent.resync


def test_the_entry_build_is_the_versions():
    version = node_program(parameters={"PORT": 80})
    program = parsed(version)
    assert isinstance(program.build, ProgramBuild) and dict(program.build.defines) == {"PORT": "80"}
    assert (program.namespace, program.name, program.program) == ("shop", "counter-v1", "counter")


def test_a_pass_before_the_watch_shows_the_last_write_does_not_write_it_again():
    node = web_node()
    node.serve(node_program())
    node.agent.reconcile_once()  # written; the cache (the state here) does not show it yet
    node.agent.reconcile_once()
    assert len(node.api.writes) == 1
    node.reconcile()  # the watch delivers it
    assert len(node.api.writes) == 1
