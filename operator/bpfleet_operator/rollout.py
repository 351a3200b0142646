"""Staged rollouts: which version each targeted node of a program should run. Pure: no API calls.

Level-triggered: everything comes from what the nodes' EbpfNodeStates say (the version each spec
names, what each status reports on it), so an operator that restarts picks the rollout up where it
was. A new version goes to the canary nodes first, then to `maxUnavailable` more nodes once every
node already on it reports ready there; a node reporting a failure of it halts the rollout, and
every node not yet on it keeps the version it runs.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from bpfleet_api import reasons

# Failures of a version that waiting will not fix, and attaches the kernel refused: the rollout
# halts on them.
HALTING = reasons.STALLING | {reasons.ATTACH_FAILED}


@dataclass(frozen=True)
class Plan:
    assign: dict[str, str]  # node -> version name
    version: str
    previous: str | None  # what the nodes not yet updated keep
    updated: int  # nodes assigned `version`
    halted: dict[str, str] = field(default_factory=dict)  # node -> its report's reason

    def status(self, total: int) -> dict[str, Any]:
        found: dict[str, Any] = {"version": self.version, "updatedNodes": self.updated, "totalNodes": total}
        if self.halted:
            found["halted"] = True
        return found


def step_size(max_unavailable: int | str | None, total: int) -> int:
    """Nodes per step: a count, or a percentage of `total` rounded down; at least 1."""
    if max_unavailable is None:
        return max(total, 1)
    if isinstance(max_unavailable, int):
        return max(max_unavailable, 1)
    percent = int(str(max_unavailable).rstrip("%"))
    return max(total * percent // 100, 1)


def staged(rollout: Mapping[str, Any] | None) -> bool:
    if not rollout:
        return False
    return bool(rollout.get("canary")) or rollout.get("maxUnavailable", "100%") != "100%"


def ready_on(report: Mapping[str, Any] | None, version: str) -> bool:
    return bool(
        report
        and report.get("version") == version
        and report.get("ready")
        and report.get("servingVersion", version) == version
    )


def failed_on(report: Mapping[str, Any] | None, version: str) -> bool:
    return bool(
        report
        and report.get("version") == version
        and not report.get("ready")
        and report.get("reason") in HALTING
    )


def plan(
    version: str,
    targeted: Sequence[str],
    current: Mapping[str, str],
    reports: Mapping[str, Mapping[str, Any]],
    rollout: Mapping[str, Any] | None,
    canary: Collection[str] = (),
) -> Plan:
    """`current`: node -> the version its spec names now; `reports`: node -> its status entry;
    `canary`: the targeted nodes the canary nodeSelector matches."""
    others = Counter(current[n] for n in targeted if current.get(n) and current[n] != version)
    # The version most nodes not on the new one run: where a halted rollout leaves them.
    previous = min(others, key=lambda v: (-others[v], v)) if others else None
    if previous is None or not staged(rollout):
        return Plan(
            {n: version for n in targeted}, version, previous if staged(rollout) else None, len(targeted)
        )
    assert rollout is not None
    updated = [n for n in targeted if current.get(n) == version]
    halted = {n: str(reports[n].get("reason")) for n in updated if failed_on(reports.get(n), version)}
    if not halted and all(ready_on(reports.get(n), version) for n in updated):
        waiting = [n for n in targeted if current.get(n) != version]
        canary_left = [n for n in waiting if n in canary]
        updated += canary_left or waiting[: step_size(rollout.get("maxUnavailable"), len(targeted))]
    on_new = set(updated)
    assign = {n: version if n in on_new else current.get(n) or previous for n in targeted}
    return Plan(assign, version, previous, len(on_new), halted)
