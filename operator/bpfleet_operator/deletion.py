"""What a program's deletion waits for on each node. Pure: no API calls.

Once the operator has removed a program's entry from every node's EbpfNodeState spec, a node whose
status still lists the program still runs it: its agent is unloading it. Nobody will ever unload it
where the Node is gone or runs no agent, so those never hold a deletion; a silent agent holds it for
the grace period, then deletion completes and a Warning event says which nodes may still run it.
"""

from __future__ import annotations

import datetime
import enum
from collections.abc import Collection
from collections.abc import Set as AbstractSet

from bpfleet_api import names
from bpfleet_operator.agents import Agents
from bpfleet_operator.kinds import ProgramKey


class Release(enum.Enum):
    WAIT = "wait"  # its agent is alive (or silent within the grace period): it will detach
    NOBODY = "nobody"  # the Node is gone or runs no agent: nothing there to detach
    GRACE_EXPIRED = "grace-expired"  # a silent agent, past the grace period: it may still run there


def decide(
    node: str,
    nodes: Collection[str],
    agents: Agents,
    deleted_at: str | None,
    now: datetime.datetime,
    grace_seconds: float,
) -> Release:
    """`node`: one whose EbpfNodeState still lists the program; `deleted_at`: the program's
    deletionTimestamp (the grace period runs from it; none yet means now)."""
    if node not in nodes or node not in agents.present:
        return Release.NOBODY
    if node not in agents.silent or not deleted_at:
        return Release.WAIT
    deleted = datetime.datetime.fromisoformat(deleted_at.replace("Z", "+00:00"))
    return Release.GRACE_EXPIRED if (now - deleted).total_seconds() >= grace_seconds else Release.WAIT


def split(
    holding: AbstractSet[str],
    nodes: Collection[str],
    agents: Agents,
    deleted_at: str | None,
    now: datetime.datetime,
    grace_seconds: float,
) -> tuple[list[str], list[str]]:
    """decide() for every node in `holding`: (the nodes waited for, those given up on), sorted.
    In set operations but for the silent agents: a deletion of 50 programs on 1,000 nodes looks
    twice a second, each time at every node still holding its program."""
    live = set(holding).intersection(nodes, agents.present)
    quiet = live.intersection(agents.silent)
    given_up = {
        n for n in quiet if decide(n, nodes, agents, deleted_at, now, grace_seconds) is Release.GRACE_EXPIRED
    }
    return sorted(live - given_up), sorted(given_up)


def pin_directory(key: ProgramKey) -> str:
    """Where the agents pin a program (docs/architecture.md, "Pins and links")."""
    namespace = key.namespace or names.CLUSTER_PIN_NAMESPACE
    return f"/sys/fs/bpf/bpfleet/{namespace}/{key.name.replace('.', '_')}"


def orphan_warning(key: ProgramKey, nodes: Collection[str], grace_seconds: float) -> str:
    """The Warning event of a deletion that completed without hearing from these nodes' agents."""
    listed = ", ".join(sorted(nodes))
    return (
        f"deleted without hearing from the agents on {listed} (silent for over {grace_seconds:g} s): "
        f"the program may still run there. To clean up, delete {pin_directory(key)} on those nodes, "
        "or restart their agent, which removes what no program asks for"
    )
