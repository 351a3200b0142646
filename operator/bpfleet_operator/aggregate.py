"""A program's status (either kind), summed up from its node objects. Pure: no API calls."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from bpfleet_api import conditions, diagnostics, names, reasons
from bpfleet_operator import agents

# Failures that will not go away by waiting: the spec has to change (kstatus Stalled).
_STALLING = {
    reasons.COMPILE_ERROR,
    reasons.VERIFIER_REJECTED,
    reasons.FUNCTION_NOT_FOUND,
    reasons.UNSUPPORTED_ON_NODE,
    reasons.INVALID_SPEC,
    reasons.SOURCE_NOT_FOUND,
    reasons.HELPER_NOT_ALLOWED,
    reasons.MAP_NOT_ALLOWED,
    reasons.MAP_TOO_LARGE,
}
MAX_FAILURES = names.MAX_PROGRAM_FAILURES


def _ready(node_program: Mapping[str, Any]) -> tuple[bool, bool]:
    """(reported for the current spec, ready) for one node object."""
    status = node_program.get("status") or {}
    current = status.get("observedGeneration") == node_program["metadata"].get("generation")
    ready = any(
        c.get("type") == conditions.READY and c.get("status") == "True" for c in status.get("conditions", [])
    )
    return current, current and ready


def program_status(
    generation: int,
    targeted: Sequence[str],
    node_programs: Sequence[Mapping[str, Any]],
    previous: Mapping[str, Any] | None,
    silent_agents: Mapping[str, str] | None = None,
    refused: Mapping[str, str] | None = None,
    notes: Sequence[str] = (),
    without_agent: int = 0,
) -> dict[str, Any]:
    """`silent_agents`: nodes whose agent stopped reporting, with the message to show. `refused`:
    nodes whose node object the API server refused, with its message. `notes`: what the Ready
    condition's message adds (a namespace annotation that is ignored). `without_agent`: nodes the
    nodeSelector matches that run no agent; they are not targeted, so they hold nothing up."""
    silent_agents, refused = silent_agents or {}, refused or {}
    by_node = {np["spec"]["nodeName"]: np for np in node_programs if np["spec"]["nodeName"] in targeted}
    ready_nodes = failed_nodes = pending_nodes = 0
    selected = attached = failed_pods = 0
    failures: list[dict[str, str]] = []
    for node in targeted:
        np = by_node.get(node)
        if node in refused:
            # Waiting will not fix it: the spec makes a node object the API server does not take.
            failed_nodes += 1
            failures.append({"node": node, "reason": reasons.INVALID_SPEC, "message": refused[node]})
            continue
        if node in silent_agents:
            # Whatever it reported last may no longer hold: pods that start there are not covered.
            failed_nodes += 1
            failures.append(
                {"node": node, "reason": reasons.AGENT_NOT_REPORTING, "message": silent_agents[node]}
            )
            continue
        if np is None:
            pending_nodes += 1
            continue
        current, ready = _ready(np)
        status = np.get("status") or {}
        if not current:
            pending_nodes += 1
            continue
        ready_nodes += ready
        node_failures = status.get("failures") or []
        failed_nodes += bool(node_failures)
        pods = status.get("pods") or {}
        selected += pods.get("selected", 0)
        attached += pods.get("attached", 0)
        failed_pods += pods.get("failed", 0)
        failures += [{"node": node, **f} for f in node_failures]
        if not ready and not node_failures:
            pending_nodes += 1  # reported, but pods still waiting for their cgroups

    failures = failures[:MAX_FAILURES]
    status: dict[str, Any] = {
        "observedGeneration": generation,
        "nodes": {"targeted": len(targeted), "ready": ready_nodes, "failed": failed_nodes},
        "pods": {"selected": selected, "attached": attached, "failed": failed_pods},
        "summary": {"nodes": f"{ready_nodes}/{len(targeted)}", "pods": f"{attached}/{selected}"},
        "failures": failures,
    }
    wanted = _conditions(generation, len(targeted), ready_nodes, pending_nodes, failures, without_agent)
    notes = [note for note in (agents.without_agent_note(without_agent), *notes) if note]
    if notes:
        ready = next(c for c in wanted if c["type"] == conditions.READY)
        ready["message"] = "; ".join([ready["message"], *notes]) if ready["message"] else "; ".join(notes)
    status["conditions"] = conditions.merge((previous or {}).get("conditions"), wanted)
    return status


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
        stalled = first["reason"] in _STALLING
        return [
            cond(conditions.READY, False, first["reason"], message),
            cond(
                conditions.STALLED,
                stalled,
                first["reason"] if stalled else "Progressing",
                message if stalled else "",
            ),
            cond(conditions.RECONCILING, not stalled, "Retrying" if not stalled else "Failed", ""),
        ]
    if pending:
        message = f"waiting for {pending} of {targeted} nodes"
        return [
            cond(conditions.READY, False, "Progressing", message),
            cond(conditions.STALLED, False, "Progressing", ""),
            cond(conditions.RECONCILING, True, "Progressing", message),
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
