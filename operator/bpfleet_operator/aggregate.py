"""A program's status (either kind), summed up from its entries in the nodes' EbpfNodeState statuses.
Pure: no API calls."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from bpfleet_api import conditions, diagnostics, names, reasons
from bpfleet_operator import agents
from bpfleet_operator.rollout import Plan

MAX_FAILURES = names.MAX_PROGRAM_FAILURES


def _failures_of(node: str, report: Mapping[str, Any]) -> list[dict[str, str]]:
    """A node's failures for one program, with the build log (fuller than the failure's message)
    in place of the build failure's message."""
    found = [{"node": node, **f} for f in report.get("failures") or []]
    if not found and not report.get("ready") and report.get("reason") in reasons.STALLING:
        found = [{"node": node, "reason": report["reason"], "message": report.get("message", "")}]
    log = report.get("buildLog")
    build = next((f for f in found if "pod" not in f and f.get("reason") == report.get("reason")), None)
    if log and build is not None:
        build["message"] = conditions.truncate(log, names.MAX_MESSAGE_CHARS)
    return found


def _current(report: Mapping[str, Any] | None, wanted: Mapping[str, Any] | None) -> bool:
    """Whether a node's status entry reports on the entry its spec has now."""
    return bool(
        report
        and wanted
        and report.get("version") == wanted["version"]
        and report.get("generation") == wanted["generation"]
    )


def program_status(
    generation: int,
    targeted: Sequence[str],
    wanted: Mapping[str, Mapping[str, Any]],
    reports: Mapping[str, Mapping[str, Any]],
    previous: Mapping[str, Any] | None,
    silent_agents: Mapping[str, str] | None = None,
    notes: Sequence[str] = (),
    without_agent: int = 0,
    rollout: Plan | None = None,
) -> dict[str, Any]:
    """`wanted`: node -> its spec entry of the program; `reports`: node -> its status entry.
    `silent_agents`: nodes whose agent stopped reporting, with the message to show. `notes`: what
    the Ready condition's message adds (a namespace annotation that is ignored). `without_agent`:
    nodes the nodeSelector matches that run no agent; they are not targeted, so they hold nothing
    up. `rollout`: the staged rollout's plan, when there is one."""
    silent_agents = silent_agents or {}
    ready_nodes = failed_nodes = pending_nodes = 0
    selected = attached = failed_pods = 0
    failures: list[dict[str, str]] = []
    for node in targeted:
        if node in silent_agents:
            # Whatever it reported last may no longer hold: pods that start there are not covered.
            failed_nodes += 1
            failures.append(
                {"node": node, "reason": reasons.AGENT_NOT_REPORTING, "message": silent_agents[node]}
            )
            continue
        report = reports.get(node)
        if report is None or not _current(report, wanted.get(node)):
            pending_nodes += 1
            continue
        ready = bool(report.get("ready"))
        ready_nodes += ready
        node_failures = _failures_of(node, report)
        failed_nodes += bool(node_failures)
        pods = report.get("pods") or {}
        selected += pods.get("selected", 0)
        attached += pods.get("attached", 0)
        failed_pods += pods.get("failed", 0)
        failures += node_failures
        if not ready and not node_failures:
            pending_nodes += 1  # reported, but pods still waiting for their cgroups

    if rollout is not None and rollout.halted:
        # The nodes that halted it first: they are what the user has to look at.
        failures.sort(key=lambda f: f.get("node") not in rollout.halted)
    failures = failures[:MAX_FAILURES]
    status: dict[str, Any] = {
        "observedGeneration": generation,
        "nodes": {"targeted": len(targeted), "ready": ready_nodes, "failed": failed_nodes},
        "pods": {"selected": selected, "attached": attached, "failed": failed_pods},
        "summary": {"nodes": f"{ready_nodes}/{len(targeted)}", "pods": f"{attached}/{selected}"},
        "failures": failures,
    }
    if rollout is not None:
        status["rollout"] = rollout.status(len(targeted))
        wanted_conditions = _rollout_conditions(generation, rollout, len(targeted), failures)
    else:
        wanted_conditions = None
    wanted_conditions = wanted_conditions or _conditions(
        generation, len(targeted), ready_nodes, pending_nodes, failures, without_agent
    )
    notes = [note for note in (agents.without_agent_note(without_agent), *notes) if note]
    if notes:
        ready = next(c for c in wanted_conditions if c["type"] == conditions.READY)
        ready["message"] = "; ".join([ready["message"], *notes]) if ready["message"] else "; ".join(notes)
    status["conditions"] = conditions.merge((previous or {}).get("conditions"), wanted_conditions)
    return status


def _rollout_conditions(
    generation: int, rollout: Plan, targeted: int, failures: list[dict[str, str]]
) -> list[dict[str, Any]] | None:
    """Conditions of a staged rollout that is halted or under way; None once it reached every node."""

    def cond(kind: str, value: bool, reason: str, message: str) -> dict[str, Any]:
        return conditions.condition(kind, value, reason, message, generation)

    if rollout.halted:
        by_reason: dict[str, list[str]] = {}
        for node, reason in sorted(rollout.halted.items()):
            by_reason.setdefault(reason, []).append(node)
        where = "; ".join(f"{reason} on {', '.join(nodes)}" for reason, nodes in by_reason.items())
        first = next((f for f in failures if f.get("node") in rollout.halted), None)
        detail = f" ({diagnostics.headline(first['reason'], first['message'])})" if first else ""
        keep = targeted - rollout.updated
        message = (
            f"rollout of version {rollout.version} halted: {where}{detail}; "
            f"{keep} of {targeted} nodes keep version {rollout.previous}"
        )
        return [
            cond(conditions.READY, False, reasons.ROLLOUT_HALTED, message),
            cond(conditions.STALLED, True, reasons.ROLLOUT_HALTED, message),
            cond(conditions.RECONCILING, False, reasons.ROLLOUT_HALTED, ""),
        ]
    if rollout.updated < targeted:
        message = f"rolling out version {rollout.version}: {rollout.updated} of {targeted} nodes updated"
        return [
            cond(conditions.READY, False, reasons.PROGRESSING, message),
            cond(conditions.STALLED, False, reasons.PROGRESSING, ""),
            cond(conditions.RECONCILING, True, reasons.PROGRESSING, message),
        ]
    return None


def _conditions(
    generation: int,
    targeted: int,
    ready: int,
    pending: int,
    failures: list[dict[str, str]],
    without_agent: int = 0,
) -> list[dict[str, Any]]:
    def cond(kind: str, value: bool, reason: str, message: str) -> dict[str, Any]:
        return conditions.condition(kind, value, reason, message, generation)

    if failures:
        first = failures[0]
        where = f"node {first['node']}" + (f", pod {first['pod']}" if first.get("pod") else "")
        message = f"{first['reason']} on {where}: {diagnostics.headline(first['reason'], first['message'])}"
        stalled = first["reason"] in reasons.STALLING
        return [
            cond(conditions.READY, False, first["reason"], message),
            cond(
                conditions.STALLED,
                stalled,
                first["reason"] if stalled else reasons.PROGRESSING,
                message if stalled else "",
            ),
            cond(conditions.RECONCILING, not stalled, "Retrying" if not stalled else "Failed", ""),
        ]
    if pending:
        message = f"waiting for {pending} of {targeted} nodes"
        return [
            cond(conditions.READY, False, reasons.PROGRESSING, message),
            cond(conditions.STALLED, False, reasons.PROGRESSING, ""),
            cond(conditions.RECONCILING, True, reasons.PROGRESSING, message),
        ]
    if targeted:
        message = f"running on {ready} of {targeted} nodes"
    else:
        message = (
            "no node with an agent matches nodeSelector" if without_agent else "no node matches nodeSelector"
        )
    return [
        cond(conditions.READY, True, "Ready", message),
        cond(conditions.STALLED, False, "Ready", ""),
        cond(conditions.RECONCILING, False, "Ready", ""),
    ]


def stalled_status(
    generation: int, reason: str, message: str, previous: Mapping[str, Any] | None
) -> dict[str, Any]:
    """Status for a spec the operator refuses before any node sees it."""
    failures = [{"reason": reason, "message": conditions.truncate(message, names.MAX_MESSAGE_CHARS)}]
    wanted = [
        conditions.condition(conditions.READY, False, reason, message, generation),
        conditions.condition(conditions.STALLED, True, reason, message, generation),
        conditions.condition(conditions.RECONCILING, False, reason, "", generation),
    ]
    return {
        "observedGeneration": generation,
        "failures": failures,
        "conditions": conditions.merge((previous or {}).get("conditions"), wanted),
    }
