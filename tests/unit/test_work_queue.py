"""The operator's work queue: bursts coalesce, failures retry, stop ends it."""

from __future__ import annotations

import asyncio

from bpfleet_operator.kinds import ProgramKey as Key
from bpfleet_operator.workqueue import WorkQueue


def test_a_burst_of_events_is_one_reconcile_per_key_and_failures_retry():
    handled: list[Key] = []
    batches: list[int] = []
    busy, flaky = Key("EbpfProgram", "ns", "busy"), Key("ClusterEbpfProgram", "", "flaky")
    failures = {flaky: 1}

    async def before_batch() -> None:
        batches.append(len(handled))

    async def handle(key: Key) -> None:
        handled.append(key)
        if failures.get(key):
            failures[key] -= 1
            raise RuntimeError("API server hiccup")

    async def scenario() -> None:
        queue = WorkQueue(handle, delay=0.05, retry=0.05, before_batch=before_batch)
        worker = asyncio.create_task(queue.run())
        for _ in range(50):
            queue.add(busy)
        queue.add(flaky)
        await asyncio.sleep(0.4)
        queue.stop()
        await asyncio.wait_for(worker, timeout=1)

    asyncio.run(scenario())
    assert handled.count(busy) == 1
    assert handled.count(flaky) == 2  # failed once, retried once
    assert batches == [0, 2]  # shared reads once per batch (the burst, then the retry), not per key
