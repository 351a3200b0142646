"""Retry delays: full jitter below a doubling, capped ceiling; the operator's are bounded in total."""

from __future__ import annotations

import random

from bpfleet_api.backoff import FullJitter
from bpfleet_operator import backoff


def test_the_ceiling_doubles_from_base_up_to_the_cap():
    jitter = FullJitter(0.5, 4.0)
    assert [jitter.ceiling(n) for n in range(6)] == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]
    assert jitter.ceiling(10_000) == 4.0  # no overflow after a very long outage


def test_every_delay_lies_between_zero_and_its_ceiling():
    jitter = FullJitter(0.25, 3.0, random.Random(7))
    for attempt in range(12):
        for _ in range(500):
            assert 0.0 <= jitter.delay(attempt) <= jitter.ceiling(attempt)


def test_a_fleet_retrying_at_the_cap_spreads_evenly_over_the_whole_interval():
    """1,000 agents failing together: full jitter, not a narrow band around the cap."""
    jitter = FullJitter(0.5, 4.0, random.Random(11))
    delays = [jitter.delay(20) for _ in range(1000)]
    bins = [0] * 8
    for d in delays:
        bins[min(int(d / 0.5), 7)] += 1
    assert all(80 <= b <= 170 for b in bins), bins  # ~125 each: no wave anywhere
    assert min(delays) < 0.1 and max(delays) > 3.9


def test_the_operator_delays_stay_below_their_ceilings_and_add_up_to_about_five_minutes():
    delays = backoff.capped_backoffs(random.Random(1))
    ceiling = FullJitter(backoff.FIRST, backoff.CAP)
    assert all(0.0 <= d <= ceiling.ceiling(i) + 0.001 for i, d in enumerate(delays))
    assert backoff.TOTAL <= sum(delays) < backoff.TOTAL + backoff.CAP


def test_two_processes_do_not_retry_in_step():
    assert backoff.capped_backoffs(random.Random(1)) != backoff.capped_backoffs(random.Random(2))
