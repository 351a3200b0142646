"""A program's placement and the node entries that must differ from it, the pure part: which version
the placement names through a rollout (default, staged, completing, halted), which nodes still need
an entry of their own, what each node is asked to run. The controller's tests (test_controller_writes)
run them through the writers."""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Any

import pytest

from bpfleet_api import names, reasons
from bpfleet_operator import placement, rollout
from bpfleet_operator.desired import Entry, entry
from bpfleet_operator.kinds import ProgramKey
from bpfleet_operator.rollout import Plan
from node_agent.intake import parse_entry
from node_agent.model import EntryKey, Trust
from node_agent.placements import placed_entries

KEY = ProgramKey(names.PROGRAM_KIND, "shop", "p")
NODES = ["n0", "n1", "n2", "n3"]
V1, V2 = "p-v1", "p-v2"
STAGED = {"maxUnavailable": 1}
NO_LABELS: dict[str, dict[str, str]] = {n: {} for n in NODES}


def named_entry(version: str) -> Entry:
    return entry(KEY, 1, version)


def placed(version: str, node_selector: Mapping[str, Any] | None = None) -> placement.Spec:
    return placement.spec(KEY, 1, version, node_selector)


def ready(version: str) -> dict[str, Any]:
    return {"version": version, "servingVersion": version, "ready": True, "reason": "Attached"}


def failing(version: str, reason: str) -> dict[str, Any]:
    return {"version": version, "servingVersion": V1, "ready": False, "reason": reason}


def reconcile(
    named: Mapping[str, Entry],
    on_placement: placement.Spec | None,
    readers: Collection[str],
    reports: Mapping[str, Mapping[str, Any]],
    rollout_spec: Mapping[str, Any] | None,
    seen: placement.Spec | None,
) -> tuple[Plan, str, dict[str, Entry]]:
    """One reconcile of program p towards V2 on NODES, as the controller chains the pure parts: the
    plan, the version the placement names, the entries the nodes' specs must name."""
    running = placement.running(NODES, named, on_placement, readers, NO_LABELS)
    plan = rollout.plan(V2, NODES, running, reports, rollout_spec)
    version = placement.placed_version(plan, NODES)
    entries = {n: named_entry(v) for n, v in plan.assign.items()}
    return plan, version, placement.node_entries(entries, version, readers, named, seen)


@pytest.mark.parametrize("readers", [set(NODES), {"n0", "n1"}, set()], ids=["all", "half", "none"])
def test_a_default_rollout_moves_the_placement_and_names_it_only_on_nodes_that_read_no_placements(
    readers: set[str],
):
    # The readers run v1 through the placement; the others through the entry their spec names.
    named = {n: named_entry(V1) for n in NODES if n not in readers}
    plan, version, own = reconcile(named, placed(V1), readers, {}, None, seen=placed(V1))
    assert version == V2 and plan.previous is None
    assert set(own) == set(NODES) - readers
    assert {e["version"] for e in own.values()} <= {V2}


def test_a_staged_rollout_keeps_the_placement_on_the_previous_version_and_names_the_new_one_on_its_steps():
    everyone = set(NODES)
    v1_ready = {n: ready(V1) for n in NODES}
    plan, version, own = reconcile({}, placed(V1), everyone, v1_ready, STAGED, seen=placed(V1))
    assert plan.updated == 1 and version == V1
    assert own == {"n0": named_entry(V2)}
    # n0 reports ready on v2: the next step, and still the previous version for the others.
    reports = {**v1_ready, "n0": ready(V2)}
    plan, version, own = reconcile(own, placed(V1), everyone, reports, STAGED, seen=placed(V1))
    assert plan.updated == 2 and version == V1
    assert own == {"n0": named_entry(V2), "n1": named_entry(V2)}


def test_a_staged_rollout_names_the_previous_version_on_nodes_that_read_no_placements():
    readers = {"n0", "n1", "n2"}
    named = {"n3": named_entry(V1)}
    reports = {n: ready(V1) for n in NODES}
    _, version, own = reconcile(named, placed(V1), readers, reports, STAGED, seen=placed(V1))
    assert version == V1
    assert {n: e["version"] for n, e in own.items()} == {"n0": V2, "n3": V1}


def test_a_completed_rollout_moves_the_placement_but_keeps_the_entries_until_the_moved_placement_is_seen():
    everyone = set(NODES)
    named = {n: named_entry(V2) for n in NODES}
    reports = {n: ready(V2) for n in NODES}
    _, version, own = reconcile(named, placed(V1), everyone, reports, STAGED, seen=placed(V1))
    assert version == V2
    # Removed now, a node would fall back to v1 until its agent sees the placement move.
    assert own == named
    _, _, own = reconcile(named, placed(V2), everyone, reports, STAGED, seen=None)
    assert own == named  # written, not seen yet
    _, version, own = reconcile(named, placed(V2), everyone, reports, STAGED, seen=placed(V2))
    assert version == V2 and own == {}


def test_the_last_step_of_a_staged_rollout_moves_the_placement_for_the_node_it_reaches():
    everyone = set(NODES)
    named = {n: named_entry(V2) for n in NODES[:3]}
    reports = {**{n: ready(V2) for n in NODES[:3]}, "n3": ready(V1)}
    plan, version, own = reconcile(named, placed(V1), everyone, reports, STAGED, seen=placed(V1))
    assert plan.updated == len(NODES) and version == V2
    assert own == named  # n3 gets v2 from the placement; the others keep theirs until it is seen


@pytest.mark.parametrize("reason", [reasons.VERIFIER_REJECTED, reasons.ATTACH_FAILED, reasons.COMPILE_ERROR])
def test_a_halted_rollout_keeps_the_placement_on_the_previous_version(reason: str):
    assert reason in rollout.HALTING
    everyone = set(NODES)
    named = {"n0": named_entry(V2)}
    reports = {**{n: ready(V1) for n in NODES[1:]}, "n0": failing(V2, reason)}
    plan, version, own = reconcile(named, placed(V1), everyone, reports, STAGED, seen=placed(V1))
    assert plan.halted == {"n0": reason} and plan.updated == 1
    assert version == V1
    assert own == named


def test_a_failure_that_waiting_may_fix_halts_nothing_and_waits_with_the_placement_on_the_previous_version():
    assert reasons.POD_CGROUP_NOT_FOUND not in rollout.HALTING
    everyone = set(NODES)
    named = {"n0": named_entry(V2)}
    v1_ready = {n: ready(V1) for n in NODES[1:]}
    reports = {**v1_ready, "n0": failing(V2, reasons.POD_CGROUP_NOT_FOUND)}
    plan, version, own = reconcile(named, placed(V1), everyone, reports, STAGED, seen=placed(V1))
    assert not plan.halted and plan.updated == 1 and version == V1 and own == named
    # Ready once the cgroup appears: the next step.
    plan, version, own = reconcile(
        named, placed(V1), everyone, {**v1_ready, "n0": ready(V2)}, STAGED, placed(V1)
    )
    assert not plan.halted and plan.updated == 2 and version == V1 and set(own) == {"n0", "n1"}


def test_placed_version_is_the_new_one_when_nothing_ran_before_even_when_staged():
    plan = rollout.plan(V2, NODES, {}, {}, STAGED)
    assert placement.placed_version(plan, NODES) == V2


def test_running_is_the_named_version_else_the_placements_on_readers_its_selector_picks():
    targeted = ["named", "picked", "not-picked", "unlabelled", "old-agent"]
    labels = {
        "named": {"pool": "b"},
        "picked": {"pool": "a"},
        "not-picked": {"pool": "b"},
        "old-agent": {"pool": "a"},
    }
    readers = {"named", "picked", "not-picked", "unlabelled"}
    on_placement = placed(V1, {"matchLabels": {"pool": "a"}})
    found = placement.running(targeted, {"named": named_entry(V2)}, on_placement, readers, labels)
    assert found == {"named": V2, "picked": V1}


def test_running_without_a_placement_is_only_what_the_specs_name():
    readers = set(NODES)
    found = placement.running(NODES, {"n2": named_entry(V2)}, None, readers, NO_LABELS)
    assert found == {"n2": V2}


def test_a_placement_without_a_node_selector_runs_on_every_reader():
    found = placement.running(NODES, {}, placed(V1), {"n0", "n3"}, {})
    assert found == {"n0": V1, "n3": V1}


@pytest.mark.parametrize("empty", [None, {}])
def test_spec_leaves_out_an_empty_node_selector(empty: dict[str, Any] | None):
    assert "nodeSelector" not in placement.spec(KEY, 3, V2, empty)


def test_spec_carries_a_node_selector_as_a_copy():
    selector = {"matchLabels": {"pool": "a"}}
    made = placement.spec(KEY, 3, V2, selector)
    assert made["nodeSelector"] == {"matchLabels": {"pool": "a"}}
    assert (made["kind"], made["namespace"], made["name"]) == tuple(KEY)
    assert (made["generation"], made["version"]) == (3, V2)
    selector["matchExpressions"] = []
    assert "matchExpressions" not in made["nodeSelector"]


@pytest.mark.parametrize(
    ("key", "where"),
    [(KEY, "shop"), (ProgramKey(names.CLUSTER_PROGRAM_KIND, "", "admin"), "bpfleet-system")],
)
def test_the_spec_the_operator_writes_is_the_entry_the_agent_reads(key: ProgramKey, where: str):
    made = placement.spec(key, 3, "v-0123456789", {"matchLabels": {"pool": "a"}})
    parsed = parse_entry(made)
    assert (parsed.key, parsed.generation, parsed.version) == (EntryKey(*key), 3, "v-0123456789")
    obj = {"metadata": {"namespace": where, "name": "p"}, "spec": made}
    trust = Trust("bpfleet-system")
    assert placed_entries([obj], {"pool": "a"}, trust) == ([parsed], [])
    assert placed_entries([obj], {"pool": "b"}, trust) == ([], [])
