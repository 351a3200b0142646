"""The operator's work queue: bursts coalesce, failures retry, stop ends it."""

from __future__ import annotations

import asyncio

from bpfleet_operator.controller import Key, WorkQueue


def test_a_burst_of_events_is_one_reconcile_per_key_and_failures_retry():
    handled: list[Key] = []
    batches: list[int] = []
    failures = {("ns", "flaky"): 1}

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
            queue.add(("ns", "busy"))
        queue.add(("ns", "flaky"))
        await asyncio.sleep(0.4)
        queue.stop()
        await asyncio.wait_for(worker, timeout=1)

    asyncio.run(scenario())
    assert handled.count(("ns", "busy")) == 1
    assert handled.count(("ns", "flaky")) == 2  # failed once, retried once
    assert batches == [0, 2]  # shared reads once per batch (the burst, then the retry), not per key
