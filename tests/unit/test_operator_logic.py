"""The operator's pure parts: builtin contracts, fan-out, versions, status aggregation."""

from __future__ import annotations

from typing import Any

import pytest

from bpfleet_api import names, reasons, versions
from bpfleet_operator import aggregate, fanout
from bpfleet_operator.builtins import catalog
from bpfleet_operator.sources import ResolvedSource, SourceError, resolve


def deny_spec(**overrides: Any) -> dict[str, Any]:
    spec = {
        "source": {"builtin": "egress-port-deny"},
        "function": "deny_connect4",
        "attach": {"type": "CgroupSockAddr", "hook": "Connect4"},
        "podSelector": {},
        "parameters": {"PORT": 6379},
    }
    spec.update(overrides)
    return spec


def no_config_maps(namespace: str, name: str) -> None:
    return None


def test_catalog_has_the_vetted_programs_with_their_sources():
    assert {"pod-traffic-counter", "egress-port-deny"} <= set(catalog())
    assert "count_packets" in catalog()["pod-traffic-counter"].source


@pytest.mark.parametrize(
    ("overrides", "problem"),
    [
        ({"parameters": {}}, "parameter PORT is required"),
        ({"parameters": {"PORT": 70000}}, "parameter PORT must be between 1 and 65535"),
        ({"parameters": {"PORT": "http"}}, "parameter PORT must be an integer"),
        ({"parameters": {"PORT": 80, "EXTRA": 1}}, "has no parameter EXTRA"),
        ({"function": "nope"}, "has no function 'nope'"),
        ({"function": "deny_connect6"}, "needs attach.hook Connect6"),
    ],
)
def test_builtin_specs_are_checked_before_reaching_nodes(overrides, problem):
    with pytest.raises(SourceError) as caught:
        resolve("shop", deny_spec(**overrides), no_config_maps)
    assert caught.value.reason == reasons.INVALID_SPEC
    assert problem in str(caught.value)


def test_config_map_source_and_its_absence():
    spec = deny_spec(source={"configMapRef": {"name": "prog", "key": "main.c"}})
    resolved = resolve(
        "shop", spec, lambda ns, name: {"main.c": "int x;"} if (ns, name) == ("shop", "prog") else None
    )
    assert resolved.text == "int x;" and resolved.origin == "configMap:prog/main.c"
    with pytest.raises(SourceError) as caught:
        resolve("shop", spec, no_config_maps)
    assert caught.value.reason == reasons.SOURCE_NOT_FOUND
    with pytest.raises(SourceError, match=r"has no key 'main\.c'"):
        resolve("shop", spec, lambda ns, name: {"other.c": ""})


def program(**spec: Any) -> dict[str, Any]:
    return {"metadata": {"name": "p", "namespace": "shop", "uid": "u1", "generation": 1}, "spec": spec}


def test_fan_out_follows_node_selector():
    nodes = {"a": {"zone": "x"}, "b": {"zone": "y"}}
    assert fanout.targeted_nodes({}, nodes) == ["a", "b"]
    assert fanout.targeted_nodes({"nodeSelector": {"matchLabels": {"zone": "y"}}}, nodes) == ["b"]


def test_a_version_is_labelled_owned_and_named_by_its_content():
    body = fanout.Version(
        program(function="f", attach={"type": "CgroupSkb", "direction": "Egress"}, podSelector={}),
        ResolvedSource("int x;", "inline"),
    ).body()
    meta, spec = body["metadata"], body["spec"]
    assert body["kind"] == names.VERSION_KIND
    assert meta["namespace"] == "shop"
    assert meta["name"] == names.version_name(names.PROGRAM_KIND, "shop", "p", spec["contentHash"])
    assert meta["labels"] == {names.PROGRAM_LABEL: "p"}
    assert meta["ownerReferences"][0]["uid"] == "u1"
    assert meta["ownerReferences"][0]["kind"] == names.PROGRAM_KIND
    assert "finalizers" not in meta
    assert spec["source"]["sha256"] == ResolvedSource("int x;", "inline").sha256
    assert spec["programKind"] == names.PROGRAM_KIND and spec["programName"] == "p"
    assert spec["contentHash"] == versions.content_hash(spec)
    # A tenant's version says nothing of scope, namespaces or a cap of its own.
    assert not {"scope", "namespaces", "maxMapBytes", "nodeName"} & set(spec)


def test_a_selector_change_is_a_new_version_a_node_selector_change_is_not():
    base = {"function": "f", "attach": {"type": "CgroupSkb", "direction": "Egress"}, "podSelector": {}}
    source = ResolvedSource("int x;", "inline")

    def name(**spec: Any) -> str:
        return fanout.Version(program(**{**base, **spec}), source).body()["metadata"]["name"]

    assert name(podSelector={"matchLabels": {"app": "web"}}) != name()
    assert name(nodeSelector={"matchLabels": {"zone": "a"}}) == name()


ENTRY = {"kind": "EbpfProgram", "namespace": "shop", "name": "p", "generation": 1, "version": "p-1"}


def wanted(*nodes: str, generation: int = 1, version: str = "p-1") -> dict[str, dict[str, Any]]:
    return {n: {**ENTRY, "generation": generation, "version": version} for n in nodes}


def report(ready: bool, generation: int = 1, version: str = "p-1", **fields: Any) -> dict[str, Any]:
    return {
        **ENTRY,
        "generation": generation,
        "version": version,
        "servingVersion": version,
        "ready": ready,
        "reason": "Attached" if ready else fields.pop("reason", "PodsPending"),
        **fields,
    }


def conds(status: dict[str, Any]) -> dict[str, tuple[str, str]]:
    return {c["type"]: (c["status"], c["reason"]) for c in status["conditions"]}


def test_all_nodes_ready_is_ready():
    reports = {n: report(True, pods={"selected": 2, "attached": 2, "failed": 0}) for n in ("a", "b")}
    status = aggregate.program_status(3, ["a", "b"], wanted("a", "b"), reports, None)
    assert status["nodes"] == {"targeted": 2, "ready": 2, "failed": 0}
    assert status["pods"] == {"selected": 4, "attached": 4, "failed": 0}
    assert status["summary"] == {"nodes": "2/2", "pods": "4/4"}
    assert conds(status)["Ready"] == ("True", "Ready")
    assert conds(status)["Reconciling"][0] == conds(status)["Stalled"][0] == "False"
    assert all(c["observedGeneration"] == 3 for c in status["conditions"])


@pytest.mark.parametrize(
    "stale",
    [report(True, generation=1), report(True, generation=2, version="p-0")],
    ids=["older generation", "older version"],
)
def test_a_node_that_has_not_reported_on_its_entry_is_not_ready(stale: dict[str, Any]):
    status = aggregate.program_status(2, ["a"], wanted("a", generation=2), {"a": stale}, None)
    assert status["nodes"]["ready"] == 0
    assert conds(status)["Reconciling"] == ("True", "Progressing")
    assert conds(status)["Ready"][0] == "False"


def test_compile_error_stalls_with_the_node_and_the_build_log():
    failure = {"reason": reasons.COMPILE_ERROR, "message": "program.c:3:5: error: use of undeclared"}
    log = "program.c:3:5: error: use of undeclared identifier 'x'\n    x = 1;\n    ^"
    failed = report(False, reason=reasons.COMPILE_ERROR, failures=[failure], buildLog=log)
    status = aggregate.program_status(1, ["a"], wanted("a"), {"a": failed}, None)
    assert status["failures"] == [{"node": "a", "reason": reasons.COMPILE_ERROR, "message": log}]
    assert conds(status)["Ready"] == ("False", reasons.COMPILE_ERROR)
    assert conds(status)["Stalled"] == ("True", reasons.COMPILE_ERROR)
    ready = next(c for c in status["conditions"] if c["type"] == "Ready")
    assert "node a" in ready["message"] and "undeclared identifier" in ready["message"]


def test_attach_failure_keeps_reconciling():
    failure = {"pod": "web-1", "reason": reasons.ATTACH_FAILED, "message": "EPERM"}
    failed = report(False, reason=reasons.ATTACH_FAILED, failures=[failure])
    status = aggregate.program_status(1, ["a"], wanted("a"), {"a": failed}, None)
    assert conds(status)["Reconciling"][0] == "True" and conds(status)["Stalled"][0] == "False"


def test_reports_of_untargeted_nodes_do_not_count():
    gone = report(False, reason="X", failures=[{"reason": "X", "message": "m"}])
    status = aggregate.program_status(1, ["a"], wanted("a", "gone"), {"a": report(True), "gone": gone}, None)
    assert status["nodes"] == {"targeted": 1, "ready": 1, "failed": 0}


def test_repeating_aggregation_keeps_transition_times():
    first = aggregate.program_status(1, ["a"], wanted("a"), {"a": report(True)}, None)
    for cond in first["conditions"]:
        cond["lastTransitionTime"] = "2000-01-01T00:00:00Z"
    second = aggregate.program_status(1, ["a"], wanted("a"), {"a": report(True)}, first)
    assert second == first


def test_failures_are_bounded():
    many = [{"pod": f"p{i}", "reason": reasons.ATTACH_FAILED, "message": "m"} for i in range(50)]
    failed = report(False, reason=reasons.ATTACH_FAILED, failures=many)
    status = aggregate.program_status(1, ["a"], wanted("a"), {"a": failed}, None)
    assert len(status["failures"]) == aggregate.MAX_FAILURES


def test_a_node_whose_agent_went_silent_is_not_ready_and_says_why():
    reports = {n: report(True, pods={"selected": 1, "attached": 1, "failed": 0}) for n in ("a", "b")}
    silent = {"b": "the agent on b has not reported since 2026-01-01T00:00:00Z"}
    status = aggregate.program_status(1, ["a", "b"], wanted("a", "b"), reports, None, silent_agents=silent)
    assert status["nodes"] == {"targeted": 2, "ready": 1, "failed": 1}
    assert status["failures"] == [
        {"node": "b", "reason": reasons.AGENT_NOT_REPORTING, "message": silent["b"]}
    ]
    assert conds(status)["Ready"] == ("False", reasons.AGENT_NOT_REPORTING)
    assert conds(status)["Reconciling"][0] == "True"  # not Stalled: it heals when the agent is back
