"""Turns what a reconcile pass found into the status entries of this node's EbpfNodeState.

Counts and bounded failures only, no per-pod list: a node's one status object holds every program
of the node (50 programs of 200 pods each must fit), and it is written at most once per pass.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from bpfleet_api import conditions, diagnostics, names, reasons
from node_agent.intake import Entry
from node_agent.kernel.backend import NODE_TARGET
from node_agent.model import EntryKey
from node_agent.reports import ATTACHED, FAILED, WAITING, ProgramReport

MAX_TARGETS = 100
# Not a failure: the new version waits for its turn to compile on this node (compile_queue).
QUEUED = "Queued"
ATTACHED_REASON = "Attached"
PODS_PENDING = "PodsPending"
# An entry removed from spec while this node still runs its program.
UNLOADING = "Unloading"
# The end of the compiler's or verifier's output kept in an entry (failures[] keeps an excerpt).
MAX_BUILD_LOG = 8 * 1024
# A whole status past this drops build logs, then all but each entry's first failure: etcd refuses
# objects over 1.5 MiB, and the spec and metadata share the object.
MAX_STATUS_BYTES = 512 * 1024
ENTRY_KEYS = ("kind", "namespace", "name", "version", "generation")
# servingVersion of an entry of which nothing runs; absent, it is the entry's version.
NOTHING_SERVED = ""


def _bounded(reason: str, message: str) -> str:
    limit = names.MAX_MESSAGE_CHARS
    if reason == reasons.VERIFIER_REJECTED:
        # The verifier explains the rejection in its last lines.
        return conditions.truncate(message, limit)
    # The compiler's first diagnostics are the ones to fix first.
    return message if len(message) <= limit else message[: limit - 1] + "…"


def program_entry(report: ProgramReport, entry: Entry, serving: str | None) -> dict[str, Any]:
    """The status entry of one EbpfNodeState entry, from what a pass found for it. `serving`: the
    name of the version object that runs (None when nothing does).

    Every byte counts 50,000 times in a fleet (and again in the API server's managedFields), so
    what can be left out is: servingVersion when it is `version` (an empty one when nothing runs),
    failures when there are none, the message of an entry attached to all its pods (its counts
    say it; each status write's cost in the API server grows with its bytes)."""
    attached = sum(p.state == ATTACHED for p in report.pods)
    failed = sum(p.state == FAILED for p in report.pods)
    ready, reason, message = _ready(report)
    status: dict[str, Any] = {
        **_keys(entry),
        "servingVersion": _serving(serving if report.loaded else None, entry.version),
        "ready": ready,
        "reason": reason,
        "message": None
        if _said_by_counts(report, ready)
        else conditions.truncate(message, names.MAX_MESSAGE_CHARS),
        "pods": {"selected": len(report.pods), "attached": attached, "failed": failed},
        # What a scope-Node program is attached to on this node.
        "targets": [{k: v for k, v in vars(t).items() if v} for t in report.targets[:MAX_TARGETS]]
        if report.scope == "Node"
        else None,
        "failures": _failures(report) or None,
        # The compiler or verifier output, bounded (failures[] keeps an excerpt).
        "buildLog": conditions.truncate(str(report.build_error), MAX_BUILD_LOG)
        if report.build_error
        else None,
        "programId": report.loaded.prog_id if report.loaded else None,
        # After an update: the maps taken over with their contents, and the ones reset (their layout
        # changed). Left out when there are none.
        "mapsKept": list(report.loaded.kept_maps) or None if report.loaded else None,
        "mapsReset": list(report.loaded.reset_maps) or None if report.loaded else None,
    }
    return {k: v for k, v in status.items() if v is not None}


def _said_by_counts(report: ProgramReport, ready: bool) -> bool:
    """Whether the entry's message would only repeat its pod counts: ready on pods, not a node."""
    return ready and report.scope != "Node"


def _serving(serving: str | None, version: str) -> str | None:
    if serving == version:
        return None  # the usual case: said by its absence
    return serving or NOTHING_SERVED


def serving_version(status_entry: Mapping[str, Any]) -> str:
    """The version object that runs, as an entry says it ("" for none)."""
    return str(status_entry.get("servingVersion", status_entry.get("version", "")))


def refused_entry(
    entry: Entry, reason: str, message: str, previous: Mapping[str, Any] | None
) -> dict[str, Any]:
    """The status entry of an entry the agent does not serve this pass. What ran of it (previous
    counts, serving version) is carried over when it keeps running."""
    message = conditions.truncate(message, names.MAX_MESSAGE_CHARS)
    status: dict[str, Any] = {**_keys(entry), "ready": False, "reason": reason, "message": message}
    for kept in ("pods", "targets", "programId"):
        if previous and kept in previous:
            status[kept] = previous[kept]
    status.setdefault("pods", {"selected": 0, "attached": 0, "failed": 0})
    serving = _serving(serving_version(previous) if previous else None, entry.version)
    if serving is not None:
        status["servingVersion"] = serving
    status["failures"] = [{"reason": reason, "message": _bounded(reason, message)}]
    return status


def unloading_entry(previous: Mapping[str, Any], failures: list[tuple[str, str]]) -> dict[str, Any]:
    """An entry removed from spec whose program this node still runs: it stays until unloaded."""
    message = "removed from this node's spec; unloading"
    if failures:
        message += f": {failures[0][1]}"
    status = {k: v for k, v in previous.items() if k in (*ENTRY_KEYS, "servingVersion", "programId")}
    status.update(
        ready=False,
        reason=UNLOADING,
        message=conditions.truncate(message, names.MAX_MESSAGE_CHARS),
        pods=previous.get("pods") or {"selected": 0, "attached": 0, "failed": 0},
        failures=[{"reason": r, "message": _bounded(r, m)} for r, m in failures][: names.MAX_NODE_FAILURES],
    )
    return status


def node_state_status(generation: int | None, entries: list[dict[str, Any]]) -> dict[str, Any]:
    """The whole EbpfNodeState status: one entry per program, in a stable order, bounded in size so
    that one node's status always fits in an etcd object."""
    entries = sorted(entries, key=lambda e: (e["kind"], e["namespace"], e["name"]))
    if _size(entries) > MAX_STATUS_BYTES:
        # Build logs go first (failures[] keep their excerpts), then all but the first failure.
        entries = [{k: v for k, v in e.items() if k != "buildLog"} for e in entries]
    if _size(entries) > MAX_STATUS_BYTES:
        entries = [{**e, "failures": e.get("failures", [])[:1]} for e in entries]
    return {"observedGeneration": generation, "programs": entries}


def only_builds_started(before: Mapping[str, Any], after: Mapping[str, Any]) -> bool:
    """Whether `after` tells nothing `before` did not but that builds were queued: every entry that
    changed now waits for its build (reason Queued), and no entry went away. Such a status may wait
    for the build's end (status_hold.QUEUED_REPORT_SECONDS), so that a quick build is one write, not two."""
    old = {entry_key(e): e for e in before.get("programs") or []}
    new = {entry_key(e): e for e in after.get("programs") or []}
    if not old.keys() <= new.keys():
        return False
    changed = [e for key, e in new.items() if old.get(key) != e]
    return bool(changed) and all(e.get("reason") == QUEUED for e in changed)


# What of an entry pods coming and going change, and the reasons they move it between.
_POD_FIELDS = frozenset({"pods", "message", "ready", "reason"})
_POD_REASONS = frozenset({ATTACHED_REASON, PODS_PENDING})


def only_pods_moved(before: Mapping[str, Any], after: Mapping[str, Any]) -> bool:
    """Whether `after` tells nothing `before` did not but that pods came or went: the same entries,
    and each one that changed is, before and after, Attached or waiting for its pods' cgroups
    (PodsPending), with its counts and message. No failure, build, version or observedGeneration."""
    old = {entry_key(e): e for e in before.get("programs") or []}
    new = {entry_key(e): e for e in after.get("programs") or []}
    if old.keys() != new.keys() or _besides_entries(before) != _besides_entries(after):
        return False
    changed = [(old[key], e) for key, e in new.items() if old[key] != e]
    return bool(changed) and all(_pods_only(a, b) for a, b in changed)


def _besides_entries(status: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in status.items() if k != "programs"}


def _pods_only(before: Mapping[str, Any], after: Mapping[str, Any]) -> bool:
    if before.get("reason") not in _POD_REASONS or after.get("reason") not in _POD_REASONS:
        return False
    return {k: v for k, v in before.items() if k not in _POD_FIELDS} == {
        k: v for k, v in after.items() if k not in _POD_FIELDS
    }


def entry_key(status_entry: Mapping[str, Any]) -> EntryKey | None:
    """The key of an entry of a status read back; None for one that is not the agent's shape."""
    try:
        key = EntryKey(status_entry["kind"], status_entry["namespace"], status_entry["name"])
    except (KeyError, TypeError):
        return None
    return key if all(isinstance(v, str) for v in vars(key).values()) else None


def _keys(entry: Entry) -> dict[str, Any]:
    return {
        "kind": entry.key.kind,
        "namespace": entry.key.namespace,
        "name": entry.key.name,
        "version": entry.version,
        "generation": entry.generation,
    }


def _size(entries: list[dict[str, Any]]) -> int:
    return len(json.dumps(entries, separators=(",", ":")))


def _failures(report: ProgramReport) -> list[dict[str, str]]:
    failures: list[dict[str, str]] = []
    if report.build_error is not None:
        failures.append(
            {
                "reason": report.build_error.reason,
                "message": _bounded(report.build_error.reason, str(report.build_error)),
            }
        )
    failures += [
        # A cluster program's pods are of many namespaces: the name alone would be ambiguous.
        {
            "pod": f"{p.namespace}/{p.name}" if p.namespace else p.name,
            "reason": p.reason,
            "message": _bounded(p.reason, p.message),
        }
        for p in report.pods
        if p.state == FAILED
    ][: names.MAX_NODE_FAILURES]
    failures += [
        {"reason": t.reason, "message": _bounded(t.reason, f"{_target_name(report, t.name)}: {t.message}")}
        for t in report.targets
        if t.state == FAILED
    ][: names.MAX_NODE_FAILURES]
    failures += [{"reason": r, "message": _bounded(r, m)} for r, m in report.cleanup_failures]
    return failures[: names.MAX_NODE_FAILURES]


def _ready(report: ProgramReport) -> tuple[bool, str, str]:
    """Whether the entry is Ready on this node, the reason, and a summary for humans."""
    failed = sum(p.state == FAILED for p in report.pods)
    waiting = sum(p.state == WAITING for p in report.pods)
    if report.build_error is not None:
        return False, report.build_error.reason, _build_failure_summary(report)
    if report.queued is not None:
        return False, QUEUED, _queued_summary(report)
    if report.cleanup_failures:
        # It runs where it should not any more (or an old version lingers): not what was asked.
        reason, message = report.cleanup_failures[0]
        return False, reason, conditions.truncate(message, names.MAX_MESSAGE_CHARS)
    if report.scope == "Node":
        failed_targets = sum(t.state == FAILED for t in report.targets)
        reason = reasons.ATTACH_FAILED if failed_targets else ATTACHED_REASON
        return not failed_targets, reason, _node_summary(report, failed_targets)
    if failed:
        return False, reasons.ATTACH_FAILED, f"{failed} of {len(report.pods)} pods failed"
    if waiting:
        return False, PODS_PENDING, f"{waiting} pods have no cgroup yet"
    attached = len(report.pods) - failed - waiting
    return True, ATTACHED_REASON, f"attached to {attached} of {len(report.pods)} pods"


def _build_failure_summary(report: ProgramReport) -> str:
    assert report.build_error is not None
    error = report.build_error
    summary = f"{error.reason}: {diagnostics.headline(error.reason, str(error))}"
    if report.serving_version and report.serving_version != report.version:
        summary += f" (version {report.serving_version} keeps running)"
    return summary


def _queued_summary(report: ProgramReport) -> str:
    # No position in line: it changes every pass, and each change would be a status write.
    summary = f"version {report.version} waits for its turn to compile on this node"
    if report.serving_version:
        return summary + f"; version {report.serving_version} keeps running"
    return summary


def _target_name(report: ProgramReport, target: str) -> str:
    if target == NODE_TARGET:
        return f"{report.attach_type} {report.target}"
    return f"interface {target}"


def _node_summary(report: ProgramReport, failed: int) -> str:
    """What a scope-Node program is attached to: its event, or the host interfaces it matched."""
    if failed:
        return f"{failed} of {len(report.targets)} targets on this node failed"
    if [t.name for t in report.targets] == [NODE_TARGET]:
        return f"attached to {report.attach_type} {report.target} for every process of this node"
    if not report.targets:
        return f"no interface of this node matches {report.target!r}"
    interfaces = ", ".join(t.name for t in report.targets)
    return f"attached to interfaces {interfaces} of this node (matching {report.target!r})"
