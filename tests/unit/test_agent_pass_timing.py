"""When the agent's pass loop runs: a pod event soon after a pass waits the debounce (a burst lands
in one pass), the first one after a quiet second does not, nor does a finished compile (its program
attaches, and becomes Ready, at once), nor a change of the node's state (its new spec is served at
once: the operator writes it once for many programs)."""

from __future__ import annotations

import threading
import time

import pytest

from node_agent import agent as agent_module
from node_agent.agent import Agent
from node_agent.reconcile import Reconciler
from tests.unit.agent_harness import Node
from tests.unit.fakes import FakeBackend, FakeCgroups, offline_api


class Synced:
    """An informer that has listed everything already."""

    def __init__(self) -> None:
        self.synced = threading.Event()
        self.synced.set()

    def start(self) -> None:
        pass

    def stop(self) -> None:
        pass


def _wait(what: str, predicate, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"no {what} in {timeout} s"
        time.sleep(0.005)


def test_the_debounce_applies_to_a_burst_not_to_its_first_event_nor_to_a_finished_compile(
    monkeypatch: pytest.MonkeyPatch,
):
    node = Node()
    agent = node.agent
    agent.programs = agent.pods = agent.placements = agent.node_labels = Synced()  # type: ignore[assignment]
    passes: list[float] = []
    monkeypatch.setattr(agent, "reconcile_once", lambda: passes.append(time.monotonic()))
    monkeypatch.setattr(agent, "_next_pass_in", lambda _result: 600.0)
    monkeypatch.setattr(agent, "_log_first_pass", lambda _result: None)
    monkeypatch.setattr(agent_module, "_DEBOUNCE", 0.0)
    loop = threading.Thread(target=agent._run_passes, daemon=True)
    loop.start()
    try:
        _wait("first pass", lambda: len(passes) == 1)
        monkeypatch.setattr(agent_module, "_DEBOUNCE", 3.0)
        done = time.monotonic()
        agent.reconciler.pool.on_done()  # type: ignore[misc]
        _wait("pass after the compile", lambda: len(passes) == 2, timeout=2.0)
        assert passes[1] - done < 1.0
        changed = time.monotonic()
        agent._run_at_once()  # what the EbpfNodeState watch calls (see the test below)
        _wait("pass after the node's state changed", lambda: len(passes) == 3, timeout=2.0)
        assert passes[2] - changed < 1.0
        monkeypatch.setattr(agent_module, "_DEBOUNCE", 0.3)
        woken = time.monotonic()
        agent.wake()  # as a pod event does
        _wait("pass after the event", lambda: len(passes) == 4)
        assert passes[3] - woken >= 0.3
        monkeypatch.setattr(agent_module, "_QUIET", 0.05)
        time.sleep(0.1)  # quiet since the last pass
        monkeypatch.setattr(agent_module, "_DEBOUNCE", 3.0)
        woken = time.monotonic()
        agent.wake()
        _wait("pass after a quiet event", lambda: len(passes) == 5, timeout=2.0)
        assert passes[4] - woken < 1.0
    finally:
        agent.stop()
        loop.join(10)
    assert not loop.is_alive()


def test_the_node_state_watch_runs_passes_at_once_and_the_pod_watch_wakes_them():
    agent = Agent(offline_api(), "node-a", Reconciler(FakeBackend(), FakeCgroups(set())))
    assert agent.programs.on_change == agent._run_at_once
    assert agent.pods.on_change == agent._wake.set
