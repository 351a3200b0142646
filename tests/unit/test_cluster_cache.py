"""The watch caches' bookkeeping, without an API server: the index of the nodes' entries by
program, and which watch events queue work. tests/apiserver runs them against a real one."""

from __future__ import annotations

from typing import Any

from bpfleet_operator.cluster_cache import AgentInfo, ClusterCache, Hooks, NodeState
from bpfleet_operator.kinds import ProgramKey

A = ProgramKey("EbpfProgram", "shop", "a")
B = ProgramKey("ClusterEbpfProgram", "", "b")


def entry(key: ProgramKey, version: str = "v1") -> dict[str, Any]:
    return {
        "kind": key.kind,
        "namespace": key.namespace,
        "name": key.name,
        "generation": 1,
        "version": version,
    }


def report(key: ProgramKey, ready: bool) -> dict[str, Any]:
    return {**entry(key), "ready": ready}


class Heard:
    def __init__(self) -> None:
        self.fanout = 0
        self.programs: list[set[ProgramKey]] = []
        self.states: list[str] = []
        self.agents: list[str] = []

    def hooks(self) -> Hooks:
        return Hooks(
            fanout_changed=lambda: setattr(self, "fanout", self.fanout + 1),
            programs_changed=self.programs.append,
            namespace_changed=lambda name: None,
            node_state_changed=self.states.append,
            agent_changed=self.agents.append,
        )


def cache() -> tuple[ClusterCache, Heard]:
    heard = Heard()
    return ClusterCache(None, heard.hooks()), heard  # type: ignore[arg-type]  (no watch is started)


def test_status_entries_are_indexed_by_program_and_only_changed_ones_queue_work():
    found, heard = cache()
    first = NodeState("u", (entry(A), entry(B)), {A: report(A, False), B: report(B, True)}, "1")
    found._on_node_state("ADDED", "n1", None, first)
    assert heard.programs == [{A, B}] and heard.states == ["n1"]
    assert found.reports(A) == {"n1": report(A, False)} and found.spec_entries(B) == {"n1": entry(B)}

    # The agent reports A ready: A alone is woken, and the node's spec did not change.
    second = NodeState("u", first.spec, {A: report(A, True), B: report(B, True)}, "2")
    found._on_node_state("MODIFIED", "n1", first, second)
    assert heard.programs[-1] == {A} and heard.states == ["n1"]

    # The operator dropped B from the spec, the agent still reports it (unloading); then it is gone.
    third = NodeState("u", (entry(A),), second.status, "3")
    found._on_node_state("MODIFIED", "n1", second, third)
    assert heard.programs[-1] == {B} and heard.states == ["n1", "n1"]
    assert found.spec_entries(B) == {} and found.reports(B) == {"n1": report(B, True)}
    found._on_node_state("DELETED", "n1", third, None)
    assert found.reports(A) == {} and found.programs_in_states() == set()


def test_agents_and_nodes_change_the_fanout_heartbeats_do_not():
    found, heard = cache()
    found._on_agent("ADDED", "n1", None, AgentInfo("u", None))
    assert (heard.fanout, heard.agents) == (1, ["n1"])
    found._on_agent("MODIFIED", "n1", AgentInfo("u", None), AgentInfo("u", "2026-12-01T00:00:00Z"))
    assert (heard.fanout, heard.agents) == (1, ["n1"])  # a heartbeat: nothing queued
    found._on_node("ADDED", "n1", None, {"zone": "a"})
    found._on_node("MODIFIED", "n1", {"zone": "a"}, {"zone": "b"})
    found._on_node("DELETED", "n1", {"zone": "b"}, None)
    assert heard.fanout == 4
