"""The operator's work queue: program keys, coalesced, reconciled one at a time, retried on failure."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from bpfleet_operator.kinds import ProgramKey

log = logging.getLogger(__name__)

Key = ProgramKey


class WorkQueue:
    """Coalesces keys: each key queued any number of times during the delay is reconciled once."""

    def __init__(
        self,
        handle: Callable[[Key], Awaitable[Any]],
        delay: float = 0.1,
        retry: float = 2.0,
        before_batch: Callable[[], Awaitable[Any]] | None = None,
    ) -> None:
        self.handle, self.delay, self.retry = handle, delay, retry
        # Reads shared by every key of a batch happen once, here, not once per key.
        self.before_batch = before_batch
        self._pending: set[Key] = set()
        self._wake = asyncio.Event()
        self._stopped = False

    def add(self, key: Key) -> None:
        self._pending.add(key)
        self._wake.set()

    def stop(self) -> None:
        self._stopped = True
        self._wake.set()

    async def run(self) -> None:
        while not self._stopped:
            await self._wake.wait()
            if self._stopped:
                break
            await asyncio.sleep(self.delay)
            self._wake.clear()
            keys, self._pending = self._pending, set()
            if self.before_batch is not None:
                try:
                    await self.before_batch()
                except Exception:
                    log.exception("preparing a batch failed; retrying it")
                    for key in keys:
                        asyncio.get_running_loop().call_later(self.retry, self.add, key)
                    continue
            for key in sorted(keys):
                try:
                    await self.handle(key)
                except Exception:
                    log.exception("reconcile failed; retrying", extra={"program": "/".join(key)})
                    asyncio.get_running_loop().call_later(self.retry, self.add, key)
