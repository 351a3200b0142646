"""How long kopf waits between retries of a failed API request, watches included.

kopf's default doubles up to 21 s, so after an API server restart the operator's watches can sleep
on for many seconds while everything else has reconnected. Here the ceiling grows to a cap of 2 s,
each delay drawn with full jitter below it (`bpfleet_api.backoff`) so that replicas restarted
together do not retry in step, for about five minutes in all; after that kopf gives up and the
operator exits, to be restarted."""

from __future__ import annotations

import random

from bpfleet_api.backoff import FullJitter

FIRST = 0.5
CAP = 2.0
TOTAL = 300.0


def capped_backoffs(rng: random.Random | None = None) -> tuple[float, ...]:
    """The delays, in seconds, each below FIRST doubling up to CAP, until they add up to TOTAL."""
    jitter = FullJitter(FIRST, CAP, rng or random.Random())
    delays: list[float] = []
    while sum(delays) < TOTAL:
        delays.append(round(jitter.delay(len(delays)), 3))
    return tuple(delays)
