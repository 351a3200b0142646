"""The operator at fleet scale, its pure parts: which nodes run an agent, what a deletion waits for on
each node, which Node and BpfleetNode events change a fan-out, and what status says about
nodes without an agent. tests/apiserver/test_fleet_operator.py runs the real thing."""

from __future__ import annotations

import datetime
import re
from pathlib import Path
from typing import Any

import pytest

from bpfleet_api import reasons
from bpfleet_operator import agents, aggregate, deletion
from bpfleet_operator.agents import Agents
from bpfleet_operator.deletion import Release
from bpfleet_operator.fleet_events import FanoutInputs
from bpfleet_operator.kinds import CLUSTER, NAMESPACED

NOW = datetime.datetime(2026, 12, 1, 12, 0, 0, tzinfo=datetime.UTC)


def stamp(seconds_ago: float) -> str:
    return (NOW - datetime.timedelta(seconds=seconds_ago)).strftime("%Y-%m-%dT%H:%M:%SZ")


def node_state(name: str, heartbeat: str | None) -> dict[str, Any]:
    return {"metadata": {"name": name}, "status": {"lastHeartbeat": heartbeat} if heartbeat else {}}


def test_every_bpfleet_node_is_an_agent_and_old_heartbeats_are_silent():
    found = agents.from_node_states(
        [node_state("live", stamp(10)), node_state("quiet", stamp(91)), node_state("new", None)], NOW, 90
    )
    assert found.present == {"live", "quiet", "new"}
    assert list(found.silent) == ["quiet"]  # one not heartbeated yet has only just started
    assert stamp(91) in found.silent["quiet"]


def test_matching_nodes_without_an_agent_are_not_targeted():
    present = Agents(frozenset({"a", "c"}))
    assert agents.split(["a", "b", "c", "d"], present) == (["a", "c"], ["b", "d"])


def ready_of(status: dict[str, Any]) -> dict[str, Any]:
    return next(c for c in status["conditions"] if c["type"] == "Ready")


ENTRY = {"kind": "EbpfProgram", "namespace": "shop", "name": "p", "generation": 1, "version": "p-1"}


def test_nodes_without_an_agent_are_said_in_ready_and_do_not_hold_it():
    report = {**ENTRY, "ready": True, "reason": "Attached"}
    status = aggregate.program_status(1, ["a"], {"a": ENTRY}, {"a": report}, None, without_agent=3)
    assert status["nodes"]["targeted"] == 1 and status["summary"]["nodes"] == "1/1"
    ready = ready_of(status)
    assert ready["status"] == "True"
    assert ready["message"] == "running on 1 of 1 nodes; 3 nodes match nodeSelector but run no agent"


def test_no_node_with_an_agent_is_ready_and_says_so():
    ready = ready_of(aggregate.program_status(1, [], {}, {}, None, without_agent=1))
    assert ready["status"] == "True"
    assert ready["message"] == (
        "no node with an agent matches nodeSelector; 1 node matches nodeSelector but runs no agent"
    )
    assert (
        ready_of(aggregate.program_status(1, [], {}, {}, None))["message"] == "no node matches nodeSelector"
    )


def test_the_agent_note_comes_with_other_notes():
    status = aggregate.program_status(1, [], {}, {}, None, without_agent=2, notes=("annotation ignored",))
    assert ready_of(status)["message"].endswith(
        "2 nodes match nodeSelector but run no agent; annotation ignored"
    )


FLEET = Agents(frozenset({"live", "quiet"}), {"quiet": "silent"})
NODES = {"live", "quiet", "bare"}


@pytest.mark.parametrize(
    ("node", "deleted_ago", "expected"),
    [
        ("gone", 0, Release.NOBODY),  # the Node no longer exists
        ("bare", None, Release.NOBODY),  # the Node runs no agent: not even the first pass waits
        ("live", 10_000, Release.WAIT),  # a live agent is waited for however long it takes
        ("quiet", None, Release.WAIT),  # no deletion time yet: the grace period starts with it
        ("quiet", 29, Release.WAIT),
        ("quiet", 30, Release.GRACE_EXPIRED),
    ],
)
def test_what_a_deletion_waits_for(node: str, deleted_ago: float | None, expected: Release):
    deleted_at = None if deleted_ago is None else stamp(deleted_ago)
    assert deletion.decide(node, NODES, FLEET, deleted_at, NOW, grace_seconds=30) is expected


def test_the_orphan_warning_names_the_nodes_and_the_pins_to_remove():
    message = deletion.orphan_warning(NAMESPACED.key("shop", "web.egress"), ["n2", "n1"], 300)
    assert "n1, n2" in message and "300 s" in message
    assert "/sys/fs/bpf/bpfleet/shop/web_egress" in message and "restart their agent" in message
    assert deletion.pin_directory(CLUSTER.key(None, "audit")) == "/sys/fs/bpf/bpfleet/_cluster/audit"


def test_only_joins_leaves_and_relabels_of_nodes_change_the_fanout():
    seen = FanoutInputs()
    assert seen.node_event("a", {"zone": "x"}, deleted=False)  # first seen (the initial listing too)
    assert not seen.node_event("a", {"zone": "x"}, deleted=False)  # a heartbeat or status update
    assert seen.node_event("a", {"zone": "y"}, deleted=False)
    assert seen.node_event("a", None, deleted=True)
    assert not seen.node_event("a", None, deleted=True)


def test_agents_starting_and_leaving_change_the_fanout_heartbeats_do_not():
    seen = FanoutInputs()
    assert seen.agent_event("a", deleted=False, was_silent=False)  # an agent started
    assert not seen.agent_event("a", deleted=False, was_silent=False)  # its heartbeat
    assert seen.agent_event("a", deleted=False, was_silent=True)  # back from silence: status heals
    assert seen.agent_event("a", deleted=True, was_silent=False)
    assert not seen.agent_event("a", deleted=True, was_silent=False)


def test_the_warning_and_rollout_reasons_are_part_of_the_api():
    assert reasons.AGENT_SILENT_ON_DELETE in reasons.ALL
    assert reasons.ROLLOUT_HALTED == "RolloutHalted" and reasons.ROLLOUT_HALTED in reasons.ALL


def test_the_reasons_that_stall_a_program_are_those_the_api_reference_marks_stalled():
    # The failures of nodes that make Ready=False with Stalled; RolloutHalted is the program's own.
    api_md = (Path(__file__).parents[2] / "docs" / "api.md").read_text()
    documented = set(re.findall(r"^\| `(\w+)` \| .* \| Stalled \|$", api_md, re.MULTILINE))
    assert reasons.ROLLOUT_HALTED in documented
    assert reasons.STALLING == documented - {reasons.ROLLOUT_HALTED}
    assert reasons.STALLING < set(reasons.ALL)


def test_a_deletion_waits_for_live_and_quiet_agents_and_gives_up_on_expired_ones():
    holding = {"gone", "bare", "live", "quiet"}
    assert deletion.split(holding, NODES, FLEET, stamp(10), NOW, grace_seconds=30) == (["live", "quiet"], [])
    assert deletion.split(holding, NODES, FLEET, stamp(30), NOW, grace_seconds=30) == (["live"], ["quiet"])
    assert deletion.split(set(), NODES, FLEET, stamp(30), NOW, grace_seconds=30) == ([], [])
