"""Turns what a reconcile pass found into the EbpfNodeProgram status a user reads."""

from __future__ import annotations

from typing import Any

from bpfleet_api import conditions, diagnostics, names, reasons
from node_agent.reconcile import ATTACHED, FAILED, WAITING, ProgramReport

MAX_POD_STATES = 100
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
        {"pod": p.name, "reason": p.reason, "message": _bounded(p.reason, p.message)}
        for p in report.pods
        if p.state == FAILED
    ]
    failures = failures[: names.MAX_NODE_FAILURES]

    if report.build_error is not None:
        ready = conditions.condition(
            conditions.READY,
            False,
            report.build_error.reason,
            _build_failure_summary(report),
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
        "pods": {"selected": len(report.pods), "attached": attached, "failed": failed},
        "podStates": [{k: v for k, v in vars(p).items() if v} for p in report.pods[:MAX_POD_STATES]],
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
