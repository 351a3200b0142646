"""The operator's API retry delays: short, capped, jittered, bounded in total."""

from __future__ import annotations

import random

from bpfleet_operator import backoff


def test_delays_grow_to_the_cap_and_add_up_to_about_five_minutes():
    delays = backoff.capped_backoffs(random.Random(1))
    assert delays[0] <= backoff.FIRST * (1 + backoff.JITTER)
    assert max(delays) <= backoff.CAP * (1 + backoff.JITTER)
    assert backoff.TOTAL <= sum(delays) < backoff.TOTAL + backoff.CAP * 2


def test_two_processes_do_not_retry_in_step():
    assert backoff.capped_backoffs(random.Random(1)) != backoff.capped_backoffs(random.Random(2))
