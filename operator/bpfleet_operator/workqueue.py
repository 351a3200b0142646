"""The operator's work queues: keys (programs, or nodes), coalesced, handled by several workers with
each key handled by one worker at a time, retried on failure."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Hashable
from typing import Any

log = logging.getLogger(__name__)


class WorkQueue:
    """Call add() on the event loop's thread only. Each key queued any number of times while it
    waits is handled once. A key queued while a worker handles it is handled again afterwards, by
    one worker: never two at once."""

    def __init__(
        self,
        handle: Callable[[Any], Awaitable[Any]],
        delay: float = 0.1,
        retry: float = 2.0,
        workers: int = 1,
        name: str = "program",
    ) -> None:
        self.handle, self.delay, self.retry, self.workers, self.name = handle, delay, retry, workers, name
        self._pending: dict[Hashable, float] = {}  # key -> when it is due (time.monotonic())
        # Keys not due yet wait on a timer, not in the order: a worker never sleeps on a key while
        # others are due, and a key queued again sooner moves its timer.
        self._timers: dict[Hashable, asyncio.TimerHandle] = {}
        self._order: asyncio.Queue[Hashable] | None = None
        self._active: set[Hashable] = set()
        # Queued while active, with when it was asked to be due: back on the queue when done, after
        # the usual delay or at that time if later (a paced key must not come back early because it
        # was busy when its next event came).
        self._again: dict[Hashable, float] = {}
        self._stopped = False
        self._changed: asyncio.Event | None = None  # set whenever the queue may have gone idle

    def _queue(self) -> asyncio.Queue[Hashable]:
        if self._order is None:
            self._order = asyncio.Queue()
            self._changed = asyncio.Event()
        return self._order

    def add(self, key: Hashable, delay: float | None = None) -> None:
        """Queues `key` to be handled `delay` seconds from now (the queue's delay by default), or
        sooner if it was queued sooner already."""
        ready = time.monotonic() + (self.delay if delay is None else delay)
        if key in self._active:
            self._again[key] = min(self._again.get(key, ready), ready)
            return
        if key in self._pending:
            if ready >= self._pending[key] or key not in self._timers:
                return  # due by then already (or in the order, due now)
            self._timers.pop(key).cancel()
        self._pending[key] = ready
        wait = ready - time.monotonic()
        if wait > 0:
            self._timers[key] = asyncio.get_running_loop().call_later(wait, self._due, key)
        else:
            self._queue().put_nowait(key)

    def _due(self, key: Hashable) -> None:
        del self._timers[key]
        self._queue().put_nowait(key)

    def idle(self) -> bool:
        return not (self._pending or self._active or self._again)

    async def wait_idle(self) -> None:
        self._queue()
        assert self._changed is not None
        while not self.idle():
            self._changed.clear()
            await self._changed.wait()

    def stop(self) -> None:
        self._stopped = True
        for timer in self._timers.values():
            timer.cancel()
        for _ in range(self.workers):
            self._queue().put_nowait(None)

    async def run(self) -> None:
        await asyncio.gather(*(self._work() for _ in range(self.workers)))

    async def _work(self) -> None:
        queue = self._queue()
        while not self._stopped:
            key = await queue.get()
            if self._stopped or key is None:
                break
            del self._pending[key]  # every add() until it was due is this one handling
            self._active.add(key)
            try:
                await self.handle(key)
            except Exception:
                log.exception(f"{self.name} reconcile failed; retrying", extra={"key": str(key)})
                asyncio.get_running_loop().call_later(self.retry, self.add, key)
            finally:
                self._active.discard(key)
                if key in self._again:
                    due = self._again.pop(key)
                    self.add(key, max(self.delay, due - time.monotonic()))
                assert self._changed is not None
                self._changed.set()
