"""Which nodes run an agent, and which of those agents went silent. Pure: no API calls.

An agent creates its node's BpfleetNode when it starts and renews status.lastHeartbeat; a Node with
no BpfleetNode has nobody to run a program, so it is never targeted and never holds a deletion.
"""

from __future__ import annotations

import datetime
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Agents:
    present: frozenset[str] = frozenset()  # nodes with a BpfleetNode
    silent: Mapping[str, str] = field(default_factory=dict)  # node -> what to tell users
    # Nodes whose running agent reads EbpfProgramPlacements (placement.py); the others' specs name
    # every program they run.
    placements: frozenset[str] = frozenset()


def reads_placements(status: Mapping[str, Any]) -> bool:
    """Whether a BpfleetNode's status says its running agent reads EbpfProgramPlacements: said by
    that start of the agent, since one that replaces it (an older one, say) rewrites agentStartedAt."""
    since = status.get("readsPlacementsSince")
    return since is not None and since == status.get("agentStartedAt")


def silence_message(node: str, last: str) -> str:
    return (
        f"the agent on {node} has not reported since {last}: pods that start there are not "
        "covered until it is back (programs already attached keep running)"
    )


def from_node_states(
    items: Iterable[Mapping[str, Any]], now: datetime.datetime, silence_seconds: float
) -> Agents:
    """`items`: BpfleetNode objects. One that has not heartbeated yet (just created) is not silent."""
    present, silent = set(), {}
    for obj in items:
        node = obj["metadata"]["name"]
        present.add(node)
        last = (obj.get("status") or {}).get("lastHeartbeat")
        if not last:
            continue
        seen = datetime.datetime.fromisoformat(last.replace("Z", "+00:00"))
        if (now - seen).total_seconds() > silence_seconds:
            silent[node] = silence_message(node, last)
    return Agents(frozenset(present), silent)


def split(matching: Sequence[str], agents: Agents) -> tuple[list[str], list[str]]:
    """(targeted, without an agent) of the nodes a nodeSelector matches."""
    return [n for n in matching if n in agents.present], [n for n in matching if n not in agents.present]


def without_agent_note(count: int) -> str:
    """What Ready's message adds about matching nodes that have no agent ("" for none)."""
    if not count:
        return ""
    if count == 1:
        return "1 node matches nodeSelector but runs no agent"
    return f"{count} nodes match nodeSelector but run no agent"
