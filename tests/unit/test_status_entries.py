"""Which status changes may wait for a build's end: only new or changed entries that are Queued."""

from __future__ import annotations

from typing import Any

from node_agent.status import QUEUED, only_builds_started


def entry(name: str, reason: str, **more: Any) -> dict[str, Any]:
    return {"kind": "EbpfProgram", "namespace": "shop", "name": name, "reason": reason, **more}


def status(*entries: dict[str, Any], generation: int = 1) -> dict[str, Any]:
    return {"observedGeneration": generation, "programs": list(entries)}


def test_a_new_queued_entry_is_only_a_build_started():
    assert only_builds_started({}, status(entry("a", QUEUED)))
    before = status(entry("a", "Attached"))
    assert only_builds_started(before, status(entry("a", "Attached"), entry("b", QUEUED), generation=2))
    assert only_builds_started(before, status(entry("a", QUEUED, version="v2")))  # an update's build


def test_any_other_news_is_not():
    before = status(entry("a", "Attached"), entry("b", QUEUED))
    assert not only_builds_started(before, before)  # nothing new at all
    assert not only_builds_started(before, status(entry("a", "Attached")))  # b went away
    assert not only_builds_started(before, status(entry("a", "AttachFailed"), entry("b", QUEUED)))
    assert not only_builds_started(before, status(entry("a", "Attached"), entry("b", "VerifierRejected")))
    assert not only_builds_started(
        before, status(entry("a", "Attached"), entry("b", QUEUED), entry("c", "Attached"))
    )
