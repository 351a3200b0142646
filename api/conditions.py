"""kstatus conditions (Ready, Reconciling, Stalled) that Flux and Argo CD know how to wait on."""

from __future__ import annotations

import datetime
from typing import Any

READY = "Ready"
RECONCILING = "Reconciling"
STALLED = "Stalled"


def now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def condition(kind: str, status: bool, reason: str, message: str, generation: int | None) -> dict[str, Any]:
    cond: dict[str, Any] = {
        "type": kind,
        "status": "True" if status else "False",
        "reason": reason,
        "message": message,
    }
    if generation is not None:
        cond["observedGeneration"] = generation
    return cond


def merge(previous: list[dict[str, Any]] | None, wanted: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The wanted conditions, keeping lastTransitionTime where a condition's status did not change,
    so that repeating a reconcile writes nothing new."""
    old = {c.get("type"): c for c in previous or []}
    merged = []
    for cond in wanted:
        before = old.get(cond["type"])
        same_status = before is not None and before.get("status") == cond["status"]
        stamped = dict(cond)
        stamped["lastTransitionTime"] = before.get("lastTransitionTime", now()) if same_status else now()
        merged.append(stamped)
    return merged


def truncate(message: str, limit: int) -> str:
    """Keeps the end of a long message: compiler and verifier logs explain themselves at the end."""
    if len(message) <= limit:
        return message
    return "…" + message[-(limit - 1) :]
