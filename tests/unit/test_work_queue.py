"""The operator's work queue: bursts coalesce, failures retry, workers run keys side by side but
never one key twice at once, stop ends it."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from bpfleet_operator.kinds import ProgramKey as Key
from bpfleet_operator.workqueue import WorkQueue


def test_a_burst_of_events_is_one_reconcile_per_key_and_failures_retry():
    handled: list[Key] = []
    busy, flaky = Key("EbpfProgram", "ns", "busy"), Key("ClusterEbpfProgram", "", "flaky")
    failures = {flaky: 1}

    async def handle(key: Key) -> None:
        handled.append(key)
        if failures.get(key):
            failures[key] -= 1
            raise RuntimeError("API server hiccup")

    async def scenario() -> None:
        queue = WorkQueue(handle, delay=0.05, retry=0.05)
        worker = asyncio.create_task(queue.run())
        for _ in range(50):
            queue.add(busy)
        queue.add(flaky)
        await asyncio.sleep(0.4)
        assert queue.idle()
        queue.stop()
        await asyncio.wait_for(worker, timeout=1)

    asyncio.run(scenario())
    assert handled.count(busy) == 1
    assert handled.count(flaky) == 2  # failed once, retried once


def test_workers_share_the_keys_and_a_key_is_never_handled_twice_at_once():
    running: set[str] = set()
    overlaps: list[str] = []
    peak = 0
    handled: list[str] = []

    async def handle(key: str) -> None:
        nonlocal peak
        if key in running:
            overlaps.append(key)
        running.add(key)
        peak = max(peak, len(running))
        await asyncio.sleep(0.05)
        handled.append(key)
        running.discard(key)

    async def scenario() -> float:
        queue = WorkQueue(handle, delay=0.01, workers=4)
        worker = asyncio.create_task(queue.run())
        start = asyncio.get_running_loop().time()
        for i in range(8):
            queue.add(f"k{i}")
        await asyncio.sleep(0.02)
        queue.add("k0")  # while k0 runs: once more afterwards, not beside it
        await asyncio.wait_for(queue.wait_idle(), timeout=2)
        took = asyncio.get_running_loop().time() - start
        queue.stop()
        await asyncio.wait_for(worker, timeout=1)
        return took

    took = asyncio.run(scenario())
    assert overlaps == []
    assert peak == 4
    assert handled.count("k0") == 2 and len(handled) == 9
    assert took < 0.35  # 9 handlings of 50 ms in parallel, not one after another (0.45 s)


def test_a_key_queued_late_waits_and_one_queued_again_sooner_goes_sooner():
    handled: list[tuple[str, float]] = []

    async def handle(key: str) -> None:
        handled.append((key, asyncio.get_running_loop().time()))

    async def scenario() -> float:
        queue = WorkQueue(handle, delay=0.01, workers=2)
        worker = asyncio.create_task(queue.run())
        start = asyncio.get_running_loop().time()
        queue.add("report", 0.3)  # a node report: gathered for a while
        queue.add("later", 0.3)
        queue.add("later", 0.3)
        queue.add("report")  # then the program itself changed: now
        await asyncio.wait_for(queue.wait_idle(), timeout=2)
        queue.stop()
        await asyncio.wait_for(worker, timeout=1)
        return start

    start = asyncio.run(scenario())
    when = {key: at - start for key, at in handled}
    assert [k for k, _ in handled] == ["report", "later"]
    assert when["report"] < 0.15 and 0.3 <= when["later"] < 0.6


def run_until_idle(queue: WorkQueue, script: Callable[[WorkQueue], Awaitable[None]]) -> float:
    """Runs `script` against the running queue, then until it is idle; returns when it started."""

    async def scenario() -> float:
        worker = asyncio.create_task(queue.run())
        start = asyncio.get_running_loop().time()
        await script(queue)
        await asyncio.wait_for(queue.wait_idle(), timeout=2)
        queue.stop()
        await asyncio.wait_for(worker, timeout=1)
        return start

    return asyncio.run(scenario())


def test_a_key_queued_with_a_delay_while_it_runs_keeps_that_delay():
    """A paced key (a program woken by node reports at most once a second) that is busy when its
    next report comes must not come back at once when it is done."""
    handled: list[float] = []

    async def handle(key: str) -> None:
        handled.append(asyncio.get_running_loop().time())
        await asyncio.sleep(0.05)

    async def script(queue: WorkQueue) -> None:
        queue.add("paced", 0.0)
        await asyncio.sleep(0.02)  # it runs
        queue.add("paced", 0.4)

    start = run_until_idle(WorkQueue(handle, delay=0.01), script)
    first, second = (at - start for at in handled)
    assert first < 0.02 and 0.4 <= second < 0.6


def test_a_key_not_due_yet_holds_no_worker_and_moves_up_when_queued_sooner():
    """One worker: a key due in a second must not keep a key due now waiting, and a key queued
    again sooner (a spec change after a node report) goes then, not at its first time."""
    handled: dict[str, float] = {}

    async def handle(key: str) -> None:
        handled[key] = asyncio.get_running_loop().time()

    async def script(queue: WorkQueue) -> None:
        queue.add("paced", 1.0)
        queue.add("now", 0.0)
        await asyncio.sleep(0.1)
        queue.add("paced", 0.0)

    start = run_until_idle(WorkQueue(handle, delay=0.01, workers=1), script)
    assert handled["now"] - start < 0.05
    assert 0.1 <= handled["paced"] - start < 0.3
