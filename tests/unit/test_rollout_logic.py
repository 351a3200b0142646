"""Staged rollouts, the pure part: step sizes, canary first, steps once ready, a halt on failure,
everything derived from what the nodes' states say. tests/apiserver/test_rollout_operator.py runs
the real operator."""

from __future__ import annotations

from typing import Any

import pytest

from bpfleet_api import reasons
from bpfleet_operator import rollout

NODES = [f"n{i}" for i in range(6)]


def ready(version: str) -> dict[str, Any]:
    return {"version": version, "servingVersion": version, "ready": True, "reason": "Attached"}


def rejected(version: str, serving: str = "v1") -> dict[str, Any]:
    return {
        "version": version,
        "servingVersion": serving,
        "ready": False,
        "reason": reasons.VERIFIER_REJECTED,
    }


@pytest.mark.parametrize(
    ("max_unavailable", "total", "size"),
    [(None, 6, 6), (2, 6, 2), (0, 6, 1), ("50%", 6, 3), ("10%", 6, 1), ("100%", 6, 6), ("33%", 1000, 330)],
)
def test_step_sizes(max_unavailable: Any, total: int, size: int):
    assert rollout.step_size(max_unavailable, total) == size


def test_default_and_100_percent_are_every_node_at_once():
    everywhere = {n: "v1" for n in NODES}
    for spec in (None, {}, {"maxUnavailable": "100%"}):
        plan = rollout.plan("v2", NODES, everywhere, {}, spec)
        assert set(plan.assign.values()) == {"v2"} and plan.updated == 6


def test_a_first_version_goes_everywhere_at_once_there_is_nothing_to_keep():
    plan = rollout.plan("v1", NODES, {}, {}, {"maxUnavailable": 1})
    assert set(plan.assign.values()) == {"v1"}


def test_steps_wait_until_the_nodes_on_the_new_version_are_ready():
    spec = {"maxUnavailable": 2}
    current = {n: "v1" for n in NODES}
    first = rollout.plan("v2", NODES, current, {n: ready("v1") for n in NODES}, spec)
    assert [n for n, v in first.assign.items() if v == "v2"] == ["n0", "n1"]
    # Not reported yet: no further step.
    again = rollout.plan("v2", NODES, first.assign, {}, spec)
    assert again.assign == first.assign and again.updated == 2
    reports = {"n0": ready("v2"), "n1": ready("v2")}
    second = rollout.plan("v2", NODES, first.assign, reports, spec)
    assert [n for n, v in second.assign.items() if v == "v2"] == ["n0", "n1", "n2", "n3"]
    assert second.status(6) == {"version": "v2", "updatedNodes": 4, "totalNodes": 6}


def test_a_failure_of_the_new_version_halts_and_the_rest_keep_the_previous_one():
    spec = {"maxUnavailable": 2}
    current = {"n0": "v2", "n1": "v2", **{n: "v1" for n in NODES[2:]}}
    plan = rollout.plan("v2", NODES, current, {"n0": ready("v2"), "n1": rejected("v2")}, spec)
    assert plan.halted == {"n1": reasons.VERIFIER_REJECTED}
    assert plan.assign == current and plan.previous == "v1"
    assert plan.status(6) == {"version": "v2", "updatedNodes": 2, "totalNodes": 6, "halted": True}


def test_a_failure_of_the_old_version_does_not_halt_the_new_one():
    current = {n: "v1" for n in NODES}
    plan = rollout.plan("v2", NODES, current, {"n0": rejected("v1")}, {"maxUnavailable": 1})
    assert not plan.halted and plan.updated == 1


def test_the_canary_goes_first_alone_whatever_the_step_size():
    spec = {"maxUnavailable": 4, "canary": {"nodeSelector": {}}}
    current = {n: "v1" for n in NODES}
    plan = rollout.plan("v2", NODES, current, {}, spec, canary={"n5"})
    assert [n for n, v in plan.assign.items() if v == "v2"] == ["n5"]
    after = rollout.plan("v2", NODES, plan.assign, {"n5": ready("v2")}, spec, canary={"n5"})
    assert [n for n, v in after.assign.items() if v == "v2"] == ["n0", "n1", "n2", "n3", "n5"]


def test_a_new_node_gets_the_previous_version_until_its_step():
    current = {"n0": "v2", **{n: "v1" for n in NODES[1:5]}}  # n5 just joined
    plan = rollout.plan("v2", NODES, current, {"n0": rejected("v2")}, {"maxUnavailable": 1})
    assert plan.assign["n5"] == "v1"
