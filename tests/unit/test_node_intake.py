"""The pure parts of reading an EbpfNodeState and writing its status: hostile entries, the size of a
node's status, the version a failed update keeps serving."""

from __future__ import annotations

import json

import pytest

from bpfleet_api import names, reasons
from node_agent import errors
from node_agent.intake import Entry, parse_entries
from node_agent.model import EntryKey
from node_agent.reconcile import FAILED, PodReport, ProgramReport
from node_agent.status import (
    MAX_STATUS_BYTES,
    UNLOADING,
    entry_key,
    node_state_status,
    program_entry,
    refused_entry,
    serving_version,
    unloading_entry,
)
from tests.unit.agent_harness import Node
from tests.unit.builders import node_program, pod

GOOD = {"kind": "EbpfProgram", "namespace": "shop", "name": "p", "generation": 2, "version": "p-0123456789"}


def test_entries_are_read_with_their_keys():
    [entry], problems = parse_entries({"spec": {"programs": [GOOD]}})
    assert entry == Entry(EntryKey("EbpfProgram", "shop", "p"), 2, "p-0123456789") and problems == []


@pytest.mark.parametrize(
    "bad",
    [
        "not an entry",
        {**GOOD, "name": ""},
        {**GOOD, "name": 7},
        {**GOOD, "version": None},
        {**GOOD, "generation": "2"},
        {**GOOD, "generation": True},
        {k: v for k, v in GOOD.items() if k != "kind"},
    ],
)
def test_an_entry_that_cannot_be_named_is_skipped_and_said(bad):
    entries, problems = parse_entries({"spec": {"programs": [bad, GOOD]}})
    assert [e.key.name for e in entries] == ["p"] and len(problems) == 1


def test_a_spec_without_programs_asks_for_nothing_and_a_bad_list_says_so():
    assert parse_entries({"spec": {"nodeName": "n"}}) == ([], [])
    assert parse_entries({"spec": {"programs": "all of them"}}) == ([], ["spec.programs is not a list"])


def test_the_first_of_two_entries_with_one_key_wins():
    second = {**GOOD, "version": "p-aaaaaaaaaa"}
    [entry], _ = parse_entries({"spec": {"programs": [GOOD, second]}})
    assert entry.version == "p-0123456789"


def test_a_cluster_entry_with_a_namespace_or_a_tenant_entry_without_is_refused():
    node = Node()
    node.serve()
    node.states[0]["spec"]["programs"] = [
        {**GOOD, "kind": names.CLUSTER_PROGRAM_KIND, "namespace": "shop"},
        {**GOOD, "namespace": ""},
        {**GOOD, "kind": "SuperEbpfProgram", "name": "q"},
    ]
    node.reconcile()
    assert node.api.reads == []  # refused before anything is read
    messages = {(e["kind"], e["namespace"]): e["message"] for e in node.status["programs"]}
    assert "has no namespace" in messages[(names.CLUSTER_PROGRAM_KIND, "shop")]
    assert "names its namespace" in messages[(names.PROGRAM_KIND, "")]
    assert "neither EbpfProgram nor ClusterEbpfProgram" in messages[("SuperEbpfProgram", "shop")]


def test_a_version_name_that_is_no_object_name_is_never_asked_for():
    node = Node()
    node.serve()
    node.states[0]["spec"]["programs"] = [{**GOOD, "version": "../../secrets/x"}]
    node.reconcile()
    assert node.api.reads == []
    assert node.entry("p")["reason"] == reasons.INVALID_SPEC


def entry(name: str = "p") -> Entry:
    return Entry(EntryKey(names.PROGRAM_KIND, "shop", name), 1, f"{name}-v1")


def failing(name: str) -> dict:
    log = "x" * 100_000
    report = ProgramReport("shop", f"{name}-v1", 1, "v", build_error=errors.VerifierRejected(log))
    report.pods = [
        PodReport(f"pod-{i}", f"u{i}", FAILED, reasons.ATTACH_FAILED, "y" * 5000) for i in range(50)
    ]
    return program_entry(report, entry(name), None)


def test_one_entry_is_bounded():
    one = failing("p")
    assert (
        len(one["message"]) <= names.MAX_MESSAGE_CHARS
        and len(one["buildLog"]) <= 8 * 1024
        and len(one["failures"]) == names.MAX_NODE_FAILURES
    )
    assert all(len(f["message"]) <= names.MAX_MESSAGE_CHARS for f in one["failures"])


def test_a_node_status_of_many_failing_programs_stays_within_its_budget():
    status = node_state_status(7, [failing(f"p{i}") for i in range(50)])
    assert len(json.dumps(status)) <= MAX_STATUS_BYTES + 1024
    assert status["observedGeneration"] == 7 and len(status["programs"]) == 50
    assert all(e["failures"] and e["reason"] == reasons.VERIFIER_REJECTED for e in status["programs"])


def test_entries_are_in_a_stable_order_so_that_an_unchanged_pass_writes_nothing():
    a = program_entry(ProgramReport("shop", "a-v1", 1, "v"), entry("a"), None)
    b = program_entry(ProgramReport("shop", "b-v1", 1, "v"), entry("b"), None)
    assert node_state_status(1, [b, a]) == node_state_status(1, [a, b])


def test_a_refused_entry_carries_what_keeps_running():
    before = {**GOOD, "servingVersion": "p-old", "pods": {"selected": 3, "attached": 3, "failed": 0}}
    status = refused_entry(entry(), reasons.SOURCE_NOT_FOUND, "version object missing", before)
    assert (status["servingVersion"], status["pods"]["attached"]) == ("p-old", 3)
    assert (status["ready"], status["reason"]) == (False, reasons.SOURCE_NOT_FOUND)
    fresh = refused_entry(entry(), reasons.INVALID_SPEC, "no", None)
    assert fresh["servingVersion"] == "" and fresh["pods"] == {"selected": 0, "attached": 0, "failed": 0}


def test_an_unloading_entry_keeps_its_keys():
    status = unloading_entry({**GOOD, "servingVersion": "p-old", "ready": True}, [("DetachFailed", "EBUSY")])
    assert entry_key(status) == EntryKey("EbpfProgram", "shop", "p")
    assert (status["ready"], status["reason"]) == (False, UNLOADING) and "EBUSY" in status["message"]
    assert entry_key({"kind": 1, "namespace": "", "name": "x"}) is None


def test_a_failed_update_reports_the_version_object_that_keeps_running():
    node = Node(pods=[pod("web-1", {"app": "web"})], cgroups={"uid-web-1"})
    node.serve(node_program())
    node.reconcile()
    node.kernel.broken_sources["broken"] = errors.CompileError("program.c:1:1: error: nope")
    v2 = node_program(source="broken")
    v2["metadata"]["name"] = "counter-v2"
    node.serve(v2)
    node.reconcile()
    status = node.entry("counter")
    assert (status["version"], status["servingVersion"]) == ("counter-v2", "counter-v1")
    assert status["reason"] == reasons.COMPILE_ERROR and status["pods"]["attached"] == 1
    assert "buildLog" in status
    # A restarted agent knows no earlier version object: it keeps the name its last status said.
    restarted = Node(kernel=node.kernel, pods=[pod("web-1", {"app": "web"})], cgroups={"uid-web-1"})
    restarted.states[:] = node.states
    restarted.api.versions = node.api.versions
    restarted.reconcile()
    assert restarted.entry("counter")["servingVersion"] == "counter-v1"


def test_a_selector_change_is_a_new_version_object_but_no_new_compile():
    node = Node(
        pods=[pod("web-1", {"app": "web"}), pod("db-1", {"app": "db"})], cgroups={"uid-web-1", "uid-db-1"}
    )
    node.serve(node_program())
    node.reconcile()
    wider = node_program(selector={})
    wider["metadata"]["name"] = "counter-v2"
    node.serve(wider)
    node.reconcile()
    assert len(node.kernel.loads) == 1
    status = node.entry("counter")
    assert serving_version(status) == "counter-v2" and status["pods"] == {
        "selected": 2,
        "attached": 2,
        "failed": 0,
    }
