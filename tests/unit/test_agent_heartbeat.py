"""The heartbeat keeps coming while a pass is stuck in a long compile."""

from __future__ import annotations

import threading
from typing import Any

from node_agent.agent import Agent
from node_agent.kernel.backend import LoadedProgram, ProgramBuild, ProgramRef
from node_agent.model import Trust
from node_agent.reconcile import Reconciler
from tests.unit.builders import node_program, node_state
from tests.unit.fakes import FakeBackend, FakeCgroups, offline_api

PERIOD = 0.05
VERSION = node_program()


class SyncedList:
    """An informer whose cache is full from the start."""

    def __init__(self, objects: list[dict[str, Any]]) -> None:
        self.items = objects
        self.synced = threading.Event()
        self.synced.set()

    def objects(self) -> list[dict[str, Any]]:
        return list(self.items)

    def get(self, name: str) -> dict[str, str]:
        return {}  # the node's labels

    def start(self) -> None: ...

    def stop(self) -> None: ...


class BeatRecorder:
    def __init__(self) -> None:
        self.beats = 0
        self.lock = threading.Lock()

    def patch_cluster_custom_object_status(self, group, version, plural, name, body, **_):
        if "lastHeartbeat" in body["status"]:
            with self.lock:
                self.beats += 1

    def get_namespaced_custom_object(self, group, version, namespace, plural, name, **_):
        return VERSION


class StuckCompile(FakeBackend):
    """load() blocks until released, like a compile near its timeout."""

    def __init__(self) -> None:
        super().__init__()
        self.compiling = threading.Event()
        self.release = threading.Event()

    def load(self, ref: ProgramRef, build: ProgramBuild, previous: ProgramRef | None = None) -> LoadedProgram:
        self.compiling.set()
        self.release.wait(10)
        return super().load(ref, build, previous)


def test_heartbeats_continue_while_a_compile_blocks_the_pass():
    kernel = StuckCompile()
    agent = Agent(
        offline_api(),
        "node-a",
        Reconciler(kernel, FakeCgroups()),
        trust=Trust("bpfleet-system"),
        heartbeat=PERIOD,
    )
    state = node_state([VERSION])
    agent.programs, agent.pods = SyncedList([state]), SyncedList([])  # type: ignore[assignment]
    agent.placements, agent.node_labels = SyncedList([]), SyncedList([])  # type: ignore[assignment]
    recorder = BeatRecorder()
    agent.custom = recorder  # type: ignore[assignment]
    runner = threading.Thread(target=agent.run)
    runner.start()
    try:
        assert kernel.compiling.wait(5), "the pass never started compiling"
        with recorder.lock:
            before = recorder.beats
        # Ten heartbeat periods inside one stuck compile.
        assert not kernel.release.wait(10 * PERIOD)
        with recorder.lock:
            during = recorder.beats - before
        assert during >= 5, f"only {during} heartbeats in 10 periods of a stuck pass"
        assert kernel.loads == []  # still the same compile: the pass really was stuck
    finally:
        kernel.release.set()
        agent.stop()
        runner.join(5)
    assert not runner.is_alive()
