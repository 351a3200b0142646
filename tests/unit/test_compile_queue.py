"""The compile order: one namespace's builds cannot starve another's."""

from __future__ import annotations

import pytest

from node_agent.compile_queue import CompileQueue
from node_agent.kernel.backend import ProgramRef


def refs(namespace: str, count: int) -> list[ProgramRef]:
    return [ProgramRef(namespace, f"p{i}", f"v{i}") for i in range(count)]


def drain(queue: CompileQueue, wanted: list[ProgramRef]) -> list[list[ProgramRef]]:
    """Runs passes until nothing is left, as the agent does (each pass builds what the plan says)."""
    passes, left = [], list(wanted)
    while left:
        plan = queue.plan(left)
        assert plan.now, "a pass with work to do must build something"
        passes.append(plan.now)
        left = [ref for ref in left if ref not in plan.now]
    return passes


def test_a_flooding_namespace_does_not_delay_another():
    flood, other = refs("flood", 20), refs("quiet", 1)
    queue = CompileQueue(per_namespace=1)
    first = queue.plan(flood + other)
    assert first.now == [flood[0], other[0]]
    assert set(first.later) == set(flood[1:])


def test_a_namespace_that_arrives_later_is_served_in_the_next_pass():
    flood = refs("flood", 10)
    queue = CompileQueue(per_namespace=1)
    queue.plan(flood)
    late = ProgramRef("late", "p", "v")
    plan = queue.plan([*flood[1:], late])
    # "late" has never been served, "flood" just was: late goes first.
    assert plan.now == [late, flood[1]]


def test_the_per_pass_bound_takes_namespaces_in_turn():
    # Three namespaces that always have work: each pass serves the one served longest ago.
    wanted = refs("a", 3) + refs("b", 3) + refs("c", 3)
    passes = drain(CompileQueue(per_namespace=1, per_pass=1), wanted)
    assert [p[0].namespace for p in passes] == ["a", "b", "c"] * 3


def test_more_builds_per_namespace_are_round_robin_within_the_pass():
    queue = CompileQueue(per_namespace=2)
    a, b = refs("a", 3), refs("b", 3)
    plan = queue.plan(a + b)
    assert plan.now == [a[0], b[0], a[1], b[1]]
    assert list(plan.later) == [a[2], b[2]]


def test_in_a_namespace_the_version_that_waited_longest_goes_first():
    queue = CompileQueue(per_namespace=1, per_pass=1)
    other, old, new = (
        ProgramRef("first", "x", "v"),
        ProgramRef("ns", "z-old", "v"),
        ProgramRef("ns", "a-new", "v"),
    )
    assert queue.plan([other, old]).now == [other]
    assert queue.plan([new, old]).now == [old]  # listed second, but it has waited since the last pass


def test_queued_versions_know_how_many_builds_are_ahead_of_them():
    plan = CompileQueue(per_namespace=1, per_pass=2).plan(refs("a", 2) + refs("b", 2) + refs("c", 1))
    assert plan.later == {refs("c", 1)[0]: 2, refs("a", 2)[1]: 3, refs("b", 2)[1]: 4}


def test_cluster_programs_count_as_one_namespace():
    cluster = refs("_cluster", 3)
    plan = CompileQueue(per_namespace=1).plan([*cluster, *refs("t", 1)])
    assert [r.namespace for r in plan.now] == ["_cluster", "t"]


def test_a_version_no_longer_wanted_leaves_the_line_and_rejoins_at_its_end():
    queue = CompileQueue(per_namespace=1)
    a, b, c = (ProgramRef("ns", name, "v") for name in "abc")
    assert queue.plan([a, b]).now == [a]
    assert queue.plan([b, c]).now == [b]  # a is no longer wanted (its entry left the node's spec)
    assert queue.plan([a, c]).now == [c]  # a is wanted again: behind c, which has waited


def test_nothing_wanted_builds_nothing():
    plan = CompileQueue().plan([])
    assert plan.now == [] and plan.later == {}


@pytest.mark.parametrize(("per_namespace", "per_pass"), [(0, 0), (1, -1)])
def test_bounds_that_would_build_nothing_are_refused(per_namespace, per_pass):
    with pytest.raises(ValueError):
        CompileQueue(per_namespace=per_namespace, per_pass=per_pass)


def test_a_limit_bounds_one_turn_to_the_pools_free_slots():
    queue = CompileQueue()
    a, b = refs("a", 2), refs("b", 2)
    assert queue.plan(a + b, limit=1).now == [a[0]]
    assert queue.plan(a[1:] + b, limit=1).now == [b[0]]  # a was just served: b's turn
    assert queue.plan(a[1:] + b[1:], limit=0).now == []  # no free slot, nothing starts
