"""How long kopf waits between retries of a failed API request, watches included.

kopf's default doubles up to 21 s, so after an API server restart the operator's watches can sleep
on for many seconds while everything else has reconnected. Here the delay grows to a cap of 2 s,
each with jitter so that replicas restarted together do not retry in step, for about five minutes
in all; after that kopf gives up and the operator exits, to be restarted."""

from __future__ import annotations

import random

FIRST = 0.5
CAP = 2.0
TOTAL = 300.0
JITTER = 0.2  # each delay is spread over ±20 %


def capped_backoffs(rng: random.Random | None = None) -> tuple[float, ...]:
    """The delays, in seconds: FIRST, doubling up to CAP, until they add up to TOTAL."""
    rng = rng or random.Random()
    delays: list[float] = []
    delay = FIRST
    while sum(delays) < TOTAL:
        delays.append(round(delay * rng.uniform(1 - JITTER, 1 + JITTER), 3))
        delay = min(delay * 2, CAP)
    return tuple(delays)
