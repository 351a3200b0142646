"""Turns what a reconcile pass found into the EbpfNodeProgram status a user reads."""

from __future__ import annotations

from typing import Any

from bpfleet_api import conditions, diagnostics, names, reasons
from node_agent.kernel.backend import NODE_TARGET
from node_agent.reports import ATTACHED, FAILED, WAITING, ProgramReport

MAX_POD_STATES = 100
# Not a failure: the new version waits for its turn to compile on this node (compile_queue).
QUEUED = "Queued"
# The kernel's verifier log buffer as BCC sizes it; a log is never longer than this.
MAX_BUILD_LOG = 64 * 1024


def _bounded(reason: str, message: str) -> str:
    limit = names.MAX_MESSAGE_CHARS
    if reason == reasons.VERIFIER_REJECTED:
        # The verifier explains the rejection in its last lines.
        return conditions.truncate(message, limit)
    # The compiler's first diagnostics are the ones to fix first.
    return message if len(message) <= limit else message[: limit - 1] + "…"


def node_program_status(report: ProgramReport, node: str, previous: dict[str, Any] | None) -> dict[str, Any]:
    previous = previous or {}
    attached = sum(p.state == ATTACHED for p in report.pods)
    failed = sum(p.state == FAILED for p in report.pods)
    waiting = sum(p.state == WAITING for p in report.pods)
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
    ]
    failures += [
        {"reason": t.reason, "message": _bounded(t.reason, f"{_target_name(report, t.name)}: {t.message}")}
        for t in report.targets
        if t.state == FAILED
    ]
    failures += [{"reason": r, "message": _bounded(r, m)} for r, m in report.cleanup_failures]
    failures = failures[: names.MAX_NODE_FAILURES]
    failed_targets = sum(t.state == FAILED for t in report.targets)

    if report.build_error is not None:
        ready = conditions.condition(
            conditions.READY,
            False,
            report.build_error.reason,
            _build_failure_summary(report),
            report.generation,
        )
    elif report.queued is not None:
        ready = conditions.condition(
            conditions.READY, False, QUEUED, _queued_summary(report), report.generation
        )
    elif report.cleanup_failures:
        # It runs where it should not any more (or an old version lingers): not what was asked.
        reason, message = report.cleanup_failures[0]
        ready = conditions.condition(conditions.READY, False, reason, message, report.generation)
    elif report.scope == "Node":
        ready = conditions.condition(
            conditions.READY,
            not failed_targets,
            reasons.ATTACH_FAILED if failed_targets else "Attached",
            _node_summary(report, failed_targets),
            report.generation,
        )
    elif failed:
        ready = conditions.condition(
            conditions.READY,
            False,
            reasons.ATTACH_FAILED,
            f"{failed} of {len(report.pods)} pods failed",
            report.generation,
        )
    elif waiting:
        ready = conditions.condition(
            conditions.READY, False, "PodsPending", f"{waiting} pods have no cgroup yet", report.generation
        )
    else:
        ready = conditions.condition(
            conditions.READY,
            True,
            "Attached",
            f"attached to {attached} of {len(report.pods)} pods",
            report.generation,
        )

    status: dict[str, Any] = {
        "observedGeneration": report.generation,
        "node": node,
        "version": report.version,
        "servingVersion": report.serving_version,
        "programId": report.loaded.prog_id if report.loaded else None,
        "pinPath": report.loaded.pin_dir if report.loaded else None,
        "maps": list(report.loaded.maps) if report.loaded else [],
        # Taken over from the previous version with their contents, or reset (their layout changed).
        "mapsKept": list(report.loaded.kept_maps) if report.loaded else [],
        "mapsReset": list(report.loaded.reset_maps) if report.loaded else [],
        "pods": {"selected": len(report.pods), "attached": attached, "failed": failed},
        "podStates": [{k: v for k, v in vars(p).items() if v} for p in report.pods[:MAX_POD_STATES]],
        # What a scope-Node program is attached to on this node; None removes it.
        "targets": [{k: v for k, v in vars(t).items() if v} for t in report.targets[:MAX_POD_STATES]]
        if report.scope == "Node"
        else None,
        "failures": failures,
        # The whole compiler or verifier output (failures[] keeps an excerpt); None removes it.
        "buildLog": conditions.truncate(str(report.build_error), MAX_BUILD_LOG)
        if report.build_error
        else None,
        "conditions": conditions.merge(previous.get("conditions"), [ready]),
    }
    return status


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
