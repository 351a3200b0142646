"""Retry delays with full jitter: each delay is drawn uniformly between zero and an exponentially
growing ceiling, capped. After an API server restart every client of a fleet retries at once;
drawn over the whole interval, a thousand agents' retries spread evenly over `cap` seconds
instead of arriving in waves, as they would with a small jitter around a fixed delay."""

from __future__ import annotations

import random
from dataclasses import dataclass, field


@dataclass
class FullJitter:
    base: float  # the ceiling of the first delay, in seconds
    cap: float  # no delay is longer
    rng: random.Random = field(default_factory=random.Random)

    def ceiling(self, attempt: int) -> float:
        """The longest delay after `attempt` failures in a row (0: none yet)."""
        return min(self.cap, self.base * 2 ** min(attempt, 62))

    def delay(self, attempt: int) -> float:
        return self.rng.uniform(0.0, self.ceiling(attempt))
