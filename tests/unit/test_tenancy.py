"""Tenancy in the operator's pure parts: what each kind reaches, where its versions live, and how
refusals show in status."""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from bpfleet_api import names, reasons
from bpfleet_operator import aggregate, fanout, tenancy
from bpfleet_operator.kinds import CLUSTER, NAMESPACED
from bpfleet_operator.sources import ResolvedSource, SourceError, resolve
from bpfleet_operator.tenancy import NamespaceInfo, Reach
from e2e.tools import REPO_ROOT

SOURCE = ResolvedSource("int f(void *ctx) { return 0; }", "inline")
NAMESPACES = {
    "shop": NamespaceInfo({"team": "web"}),
    "blog": NamespaceInfo({"team": "web", "tier": "dev"}),
    "kube-system": NamespaceInfo({}),
}


@pytest.fixture(autouse=True)
def _system_namespace(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(names.SYSTEM_NAMESPACE_ENV, "bpfleet-infra")


def cluster_program(name: str = "tracer", **spec: Any) -> dict[str, Any]:
    spec.setdefault("source", {"inline": SOURCE.text})
    spec.setdefault("function", "f")
    spec.setdefault("attach", {"type": "Tracepoint", "name": "sched:sched_process_exec"})
    return {"metadata": {"name": name, "uid": "cu1", "generation": 1}, "spec": spec}


def tenant_program(name: str = "p", **spec: Any) -> dict[str, Any]:
    spec.setdefault("source", {"inline": SOURCE.text})
    spec.setdefault("function", "f")
    spec.setdefault("attach", {"type": "CgroupSkb", "direction": "Egress"})
    spec.setdefault("podSelector", {})
    return {"metadata": {"name": name, "namespace": "shop", "uid": "u1", "generation": 1}, "spec": spec}


def cluster_version(program: dict[str, Any]) -> dict[str, Any]:
    """The program's EbpfProgramVersion."""
    spec = program["spec"]
    reach = tenancy.reach(CLUSTER, "", spec, NAMESPACES)
    return fanout.Version(program, SOURCE, kind=CLUSTER, reach=reach).body()


# --- versions of ClusterEbpfPrograms ------------------------------------------------------------


def test_cluster_versions_live_in_the_system_namespace_labelled_and_owned():
    body = cluster_version(cluster_program(scope="Pods", podSelector={}))
    meta = body["metadata"]
    assert meta["namespace"] == "bpfleet-infra"
    assert meta["name"] == names.version_name(
        names.CLUSTER_PROGRAM_KIND, "", "tracer", body["spec"]["contentHash"]
    )
    assert meta["labels"] == {names.CLUSTER_PROGRAM_LABEL: "tracer"}
    assert names.PROGRAM_LABEL not in meta["labels"]  # never mistaken for an EbpfProgram's
    assert meta["ownerReferences"] == [
        {
            "apiVersion": names.API_VERSION,
            "kind": names.CLUSTER_PROGRAM_KIND,
            "name": "tracer",
            "uid": "cu1",
            "controller": True,
        }
    ]
    assert "finalizers" not in meta
    assert body["spec"]["programKind"] == names.CLUSTER_PROGRAM_KIND


def test_scope_pods_lists_the_namespaces_the_selector_picks():
    every = cluster_version(cluster_program(scope="Pods", podSelector={"matchLabels": {"app": "x"}}))
    assert every["spec"]["scope"] == "Pods"
    assert every["spec"]["namespaces"] == ["blog", "kube-system", "shop"]  # absent selector: all
    assert every["spec"]["podSelector"] == {"matchLabels": {"app": "x"}}
    web = cluster_program(scope="Pods", podSelector={}, namespaceSelector={"matchLabels": {"team": "web"}})
    assert cluster_version(web)["spec"]["namespaces"] == ["blog", "shop"]
    dev = cluster_program(
        scope="Pods",
        podSelector={},
        namespaceSelector={"matchExpressions": [{"key": "tier", "operator": "DoesNotExist"}]},
    )
    assert cluster_version(dev)["spec"]["namespaces"] == ["kube-system", "shop"]
    none = cluster_program(scope="Pods", podSelector={}, namespaceSelector={"matchLabels": {"team": "x"}})
    assert cluster_version(none)["spec"]["namespaces"] == []  # no pod, rather than every pod


def test_scope_node_has_no_pod_filter_and_keeps_its_interface_pattern():
    program = cluster_program(
        scope="Node", attach={"type": "Tc", "direction": "Ingress", "interface": "eth*"}, maxMapBytes=4096
    )
    spec = cluster_version(program)["spec"]
    assert spec["scope"] == "Node"
    assert "podSelector" not in spec and "namespaces" not in spec
    assert spec["attach"]["interface"] == "eth*"
    assert spec["maxMapBytes"] == 4096


def test_a_cluster_program_without_scope_is_scope_pods():
    spec = cluster_version(cluster_program(podSelector={}))["spec"]
    assert spec["scope"] == "Pods" and spec["namespaces"] == ["blog", "kube-system", "shop"]


# --- EbpfPrograms: their own namespace, whatever the spec says -----------------------------------


def test_a_tenant_spec_cannot_widen_its_reach():
    program = tenant_program(scope="Node", namespaceSelector={}, maxMapBytes=1 << 40)
    reach = tenancy.reach(NAMESPACED, "shop", program["spec"], NAMESPACES)
    spec = fanout.Version(program, SOURCE, kind=NAMESPACED, reach=reach).spec()
    assert spec["programKind"] == names.PROGRAM_KIND
    assert not {"scope", "namespaces", "maxMapBytes"} & set(spec)
    assert spec["podSelector"] == {}


@pytest.mark.parametrize(
    ("attach", "function", "problem"),
    [
        ({"type": "Tc", "direction": "Ingress", "side": "Host"}, "f", "attach.side Host reaches the node's"),
        ({"type": "Kprobe", "function": "do_sys_open"}, "f", "types Kprobe and Kretprobe trace the whole"),
        ({"type": "Kretprobe", "function": "do_sys_open"}, "f", "use a ClusterEbpfProgram"),
        ({"type": "CgroupSkb", "direction": "Egress"}, "bpfleet_pods_filter", "reserved for the agent"),
    ],
)
def test_what_a_tenant_may_not_do_is_refused_by_the_operator_too(attach, function, problem):
    spec = tenant_program(attach=attach, function=function)["spec"]
    assert any(problem in p for p in tenancy.problems(NAMESPACED, spec))


def test_cluster_programs_may_go_node_wide_but_not_take_reserved_names():
    kprobe = {"type": "Kprobe", "function": "do_sys_open"}
    assert tenancy.problems(CLUSTER, cluster_program(attach=kprobe, scope="Node")["spec"]) == []
    host = {"type": "Tc", "direction": "Ingress", "side": "Host"}
    assert tenancy.problems(CLUSTER, cluster_program(attach=host, podSelector={})["spec"]) == []
    reserved = cluster_program(function="bpfleet_entry", scope="Node")["spec"]
    assert tenancy.problems(CLUSTER, reserved) == [
        "function names starting with bpfleet_ are reserved for the agent"
    ]


@pytest.mark.parametrize(
    ("annotation", "expected"),
    [
        (None, (None, False)),
        ("1048576", (1048576, False)),
        (" 4096 ", (4096, False)),
        ("0", (None, True)),
        ("-5", (None, True)),
        ("64Mi", (None, True)),
        ("١٢٣", (None, True)),  # digits, but not ASCII ones
        (str(2**63), (None, True)),  # beyond the version's int64
    ],
)
def test_the_namespace_annotation_caps_map_memory_when_it_is_a_positive_integer(annotation, expected):
    annotations = {} if annotation is None else {names.MAX_MAP_BYTES_ANNOTATION: annotation}
    namespaces = {**NAMESPACES, "shop": NamespaceInfo({}, annotations)}
    reach = tenancy.reach(NAMESPACED, "shop", tenant_program()["spec"], namespaces)
    assert (reach.max_map_bytes, bool(reach.notes)) == expected
    spec = fanout.Version(tenant_program(), SOURCE, kind=NAMESPACED, reach=reach).spec()
    assert spec.get("maxMapBytes") == expected[0]
    if expected[1]:
        assert "namespace shop" in reach.notes[0] and names.MAX_MAP_BYTES_ANNOTATION in reach.notes[0]


def test_another_namespace_annotation_does_not_apply():
    namespaces = {**NAMESPACES, "blog": NamespaceInfo({}, {names.MAX_MAP_BYTES_ANNOTATION: "4096"})}
    assert tenancy.reach(NAMESPACED, "shop", tenant_program()["spec"], namespaces) == Reach()


# --- sources -----------------------------------------------------------------------------------


def config_maps(namespace: str, name: str) -> dict[str, str] | None:
    return {"main.c": f"// {namespace}"} if name == "prog" else None


def test_a_cluster_program_reads_the_config_map_its_reference_names():
    spec = cluster_program(source={"configMapRef": {"name": "prog", "namespace": "tools", "key": "main.c"}})
    key = CLUSTER.key(None, "tracer")
    assert CLUSTER.config_map_namespace(key, spec["spec"]) == "tools"
    resolved = resolve("tools", spec["spec"], config_maps, origin_namespace=True)
    assert resolved.text == "// tools" and resolved.origin == "configMap:tools/prog/main.c"


def test_a_tenant_reads_its_own_namespace_whatever_the_reference_says():
    spec = tenant_program(source={"configMapRef": {"name": "prog", "namespace": "kube-system", "key": "x"}})
    assert NAMESPACED.config_map_namespace(NAMESPACED.key("shop", "p"), spec["spec"]) == "shop"


def test_a_config_map_source_too_long_for_a_version_is_invalid():
    spec = tenant_program(source={"configMapRef": {"name": "big", "key": "main.c"}})["spec"]
    with pytest.raises(SourceError, match="at most 65536") as caught:
        resolve("shop", spec, lambda ns, name: {"main.c": "x" * 65537})
    assert caught.value.reason == reasons.INVALID_SPEC


# --- status -------------------------------------------------------------------------------------


def test_notes_go_in_the_ready_message_without_failing():
    note = "namespace shop has annotation bpfleet.io/max-map-bytes='lots', which is not a positive integer"
    status = aggregate.program_status(1, [], {}, {}, None, notes=(note,))
    ready = next(c for c in status["conditions"] if c["type"] == "Ready")
    assert ready["status"] == "True" and ready["message"].endswith(note)
    assert status["failures"] == []


@pytest.mark.parametrize(
    "example", sorted((REPO_ROOT / "examples").glob("cluster-*.yaml")), ids=lambda p: p.name
)
def test_the_cluster_examples_pass_the_operators_checks(example):
    program = yaml.safe_load(example.read_text())
    assert program["kind"] == names.CLUSTER_PROGRAM_KIND
    assert tenancy.problems(CLUSTER, program["spec"]) == []
    resolve("", program["spec"], config_maps, origin_namespace=True)  # raises SourceError if not


@pytest.mark.parametrize(
    "reason", [reasons.HELPER_NOT_ALLOWED, reasons.MAP_NOT_ALLOWED, reasons.MAP_TOO_LARGE]
)
def test_what_a_kind_may_not_load_stalls(reason):
    failure = {"reason": reason, "message": "bpf_probe_write_user is not allowed"}
    entry = {"kind": "EbpfProgram", "namespace": "shop", "name": "p", "generation": 1, "version": "p-1"}
    report = {**entry, "ready": False, "reason": reason, "failures": [failure]}
    status = aggregate.program_status(1, ["a"], {"a": entry}, {"a": report}, None)
    stalled = next(c for c in status["conditions"] if c["type"] == "Stalled")
    assert (stalled["status"], stalled["reason"]) == ("True", reason)
