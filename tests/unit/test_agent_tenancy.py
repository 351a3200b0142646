"""The agent's trust rules: what an entry and its version may make this node do, by kind and namespace."""

from __future__ import annotations

import pytest

from bpfleet_api import names, reasons
from node_agent import errors
from node_agent.intake import Entry
from node_agent.model import CLUSTER_PINS, DEFAULT_MAX_MAP_BYTES, EntryKey, NodeProgram, Pod, Trust
from node_agent.reconcile import ATTACHED, FAILED, Reconciler
from node_agent.status import program_entry
from tests.unit.builders import cluster_program, node_program, parsed, pod
from tests.unit.fakes import FakeBackend, FakeCgroups

WEB = {"app": "web"}
TRUST = Trust(system_namespace="bpfleet-system")
KPROBE = {"type": "Kprobe", "function": "do_sys_openat2"}
TRACEPOINT = {"type": "Tracepoint", "name": "sched:sched_process_exec"}


def parse(obj: dict, trust: Trust = TRUST) -> NodeProgram:
    """As the agent reads it: a cluster kind's version from the system namespace only, whatever
    namespace this version object is in (a forged one in a tenant's is then refused)."""
    return parsed(obj, trust)


def refused(obj: dict, trust: Trust = TRUST) -> str:
    with pytest.raises(errors.InvalidSpec) as caught:
        parse(obj, trust)
    assert caught.value.reason == reasons.INVALID_SPEC
    return str(caught.value)


# -- kinds and namespaces ---------------------------------------------------------------------------


def test_a_cluster_program_is_honoured_in_the_system_namespace_only():
    program = parse(cluster_program())
    assert program.cluster and program.build.cluster
    assert program.ref.namespace == CLUSTER_PINS == "_cluster"
    message = refused(cluster_program(namespace="shop"))
    assert "ClusterEbpfProgram" in message and "bpfleet-system" in message


def test_the_system_namespace_comes_from_the_environment(monkeypatch):
    monkeypatch.setenv("BPFLEET_SYSTEM_NAMESPACE", "ops")
    assert parse(cluster_program(namespace="ops"), Trust()).cluster
    refused(cluster_program(namespace="bpfleet-system"), Trust())
    monkeypatch.delenv("BPFLEET_SYSTEM_NAMESPACE")
    assert Trust().system_namespace == "bpfleet-system"


def test_a_namespaced_program_in_the_system_namespace_is_still_namespaced():
    program = parse(node_program(namespace="bpfleet-system"))
    assert not program.cluster and program.ref.namespace == "bpfleet-system"


def test_an_unknown_kind_or_scope_is_refused():
    assert "neither EbpfProgram nor ClusterEbpfProgram" in refused(
        node_program(programKind="SuperEbpfProgram")
    )
    assert "scope" in refused(cluster_program(scope="Cluster"))


@pytest.mark.parametrize(
    ("spec", "what"),
    [
        ({"scope": "Node", "attach": TRACEPOINT}, "scope Node"),
        ({"attach": KPROBE}, "Kprobe"),
        ({"attach": {"type": "Kretprobe", "function": "do_sys_openat2"}}, "Kretprobe"),
        ({"attach": {"type": "Tc", "direction": "Egress", "side": "Host"}}, "side Host"),
    ],
)
def test_a_namespaced_program_may_not_reach_beyond_its_pods(spec, what):
    message = refused(node_program(**spec))
    assert what in message and "use a ClusterEbpfProgram" in message


@pytest.mark.parametrize("kind", ["namespaced", "cluster"])
def test_functions_of_the_agent_are_reserved_for_both_kinds(kind):
    obj = node_program() if kind == "namespaced" else cluster_program()
    obj["spec"]["function"] = "bpfleet_entry"
    assert "reserved" in refused(obj)


def test_a_cluster_program_may_have_what_a_namespaced_one_may_not():
    assert parse(cluster_program(attach=KPROBE)).build.attach.target == "do_sys_openat2"
    assert (
        parse(cluster_program(attach={"type": "Tc", "direction": "Egress", "side": "Host"})).scope == "Pods"
    )
    assert parse(cluster_program(scope="Node", attach=TRACEPOINT)).scope == "Node"


@pytest.mark.parametrize(
    "attach",
    [
        {"type": "CgroupSkb", "direction": "Egress"},
        {"type": "Uprobe", "binary": "/bin/sh", "symbol": "main"},
        {"type": "Tc", "direction": "Egress"},  # no interface
        {"type": "Tc", "direction": "Egress", "interface": "eth*", "side": "Pod"},
        {"type": "Xdp", "interface": ""},
    ],
)
def test_scope_node_takes_node_wide_tracing_and_node_interfaces_only(attach):
    refused(cluster_program(scope="Node", attach=attach))


# -- map memory caps --------------------------------------------------------------------------------


def test_the_map_memory_cap_is_the_versions_or_the_agents_default():
    assert parse(node_program()).build.max_map_bytes == DEFAULT_MAX_MAP_BYTES == 64 * 1024 * 1024
    assert parse(node_program(), Trust("bpfleet-system", max_map_bytes=1024)).build.max_map_bytes == 1024
    assert parse(node_program(maxMapBytes=4096)).build.max_map_bytes == 4096
    assert parse(cluster_program(maxMapBytes=4096)).build.max_map_bytes == 4096


@pytest.mark.parametrize("value", [0, -1, "64Mi", True, 1.5])
def test_a_map_memory_cap_that_is_not_a_positive_integer_is_refused(value):
    assert "maxMapBytes" in refused(node_program(maxMapBytes=value))


def test_another_cap_or_scope_makes_another_version():
    base = parse(node_program()).ref.version
    assert parse(node_program(maxMapBytes=DEFAULT_MAX_MAP_BYTES)).ref.version == base  # default: same
    assert parse(node_program(maxMapBytes=4096)).ref.version != base
    for_pods = parse(cluster_program(attach=TRACEPOINT)).ref.version
    assert parse(cluster_program(scope="Node", attach=TRACEPOINT)).ref.version != for_pods


# -- which pods ------------------------------------------------------------------------------------


def run(programs: list[dict], pods: list[dict], kernel: FakeBackend, cgroups: FakeCgroups):
    return Reconciler(kernel, cgroups).run([parse(p) for p in programs], [Pod.from_object(p) for p in pods])


def test_a_namespaced_program_selects_its_own_namespace_whatever_spec_says():
    kernel, cgroups = FakeBackend(), FakeCgroups({"uid-mine", "uid-theirs"})
    tenant = node_program(selector={}, namespaces=["shop", "bank"])
    pods = [pod("mine", WEB, namespace="shop"), pod("theirs", WEB, namespace="bank")]
    [report] = run([tenant], pods, kernel, cgroups).reports
    assert [p.name for p in report.pods] == ["mine"]
    assert {uid for links in kernel.links.values() for uid in links} == {"uid-mine"}


def test_a_cluster_program_selects_pods_of_its_namespaces_that_match():
    kernel, cgroups = FakeBackend(), FakeCgroups({"uid-a", "uid-b", "uid-c", "uid-d"})
    admin = cluster_program(namespaces=["shop", "bank"])
    pods = [
        pod("a", WEB, namespace="shop"),
        pod("b", WEB, namespace="bank"),
        pod("c", {"app": "db"}, namespace="bank"),
        pod("d", WEB, namespace="other"),
    ]
    [report] = run([admin], pods, kernel, cgroups).reports
    assert [(p.namespace, p.name, p.state) for p in report.pods] == [
        ("shop", "a", ATTACHED),
        ("bank", "b", ATTACHED),
    ]
    [ref] = kernel.links
    assert ref.namespace == "_cluster" and set(kernel.links[ref]) == {"uid-a", "uid-b"}


def test_a_cluster_program_without_namespaces_selects_no_pod():
    kernel, cgroups = FakeBackend(), FakeCgroups({"uid-a"})
    [report] = run([cluster_program(selector={})], [pod("a", WEB)], kernel, cgroups).reports
    assert report.pods == [] and report.loaded is not None


def test_cluster_pod_states_and_failures_carry_the_pods_namespace():
    kernel, cgroups = FakeBackend(refuse_attach={"uid-b"}), FakeCgroups({"uid-a", "uid-b"})
    admin = cluster_program(namespaces=["shop", "bank"])
    [report] = run(
        [admin], [pod("a", WEB, namespace="shop"), pod("b", WEB, namespace="bank")], kernel, cgroups
    ).reports
    assert [(p.namespace, p.state) for p in report.pods] == [("shop", ATTACHED), ("bank", FAILED)]
    entry = Entry(EntryKey(names.CLUSTER_PROGRAM_KIND, "", "admin"), 1, "admin-v1")
    status = program_entry(report, entry, "admin-v1")
    assert status["pods"] == {"selected": 2, "attached": 1, "failed": 1}
    assert status["failures"] == [
        {
            "pod": "bank/b",
            "reason": reasons.ATTACH_FAILED,
            "message": "attaching to /cgroup/poduid-b: Operation not permitted",
        }
    ]


def test_a_namespaced_and_a_cluster_program_of_one_name_are_two_programs():
    kernel, cgroups = FakeBackend(), FakeCgroups({"uid-a"})
    tenant = node_program("same", namespace="bpfleet-system", selector={})
    admin = cluster_program("same", namespaces=["bpfleet-system"], selector={})
    reports = run([tenant, admin], [pod("a", WEB, namespace="bpfleet-system")], kernel, cgroups).reports
    assert {ref.namespace for ref in kernel.programs} == {"bpfleet-system", "_cluster"}
    assert all(r.pods[0].state == ATTACHED for r in reports)


def test_labels_long_node_names_the_way_the_operator_does():
    node = "n" * 70
    value = names.label_value(node)
    assert len(value) == 63 and value != names.label_value("n" * 71)
    assert names.label_value("node-a") == "node-a"


def test_namespaces_that_are_not_a_list_of_names_are_refused():
    assert "namespaces" in refused(cluster_program(namespaces="shop"))  # not ("s", "h", "o", "p")
    assert "namespaces" in refused(cluster_program(namespaces=[{"name": "shop"}]))
