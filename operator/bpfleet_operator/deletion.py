"""What a program's deletion does with each of its node objects. Pure: no API calls.

The agent's finalizer on a node object means "this node still runs it". The operator removes that
finalizer itself when nobody will ever detach (the Node is gone, or it runs no agent), and when the
node's agent has been silent past the grace period: then deletion completes and a Warning event
says which nodes may still run the program.
"""

from __future__ import annotations

import datetime
import enum
from collections.abc import Collection, Mapping
from typing import Any

from bpfleet_api import names
from bpfleet_operator.agents import Agents
from bpfleet_operator.kinds import ProgramKey


class Release(enum.Enum):
    WAIT = "wait"  # its agent is alive (or silent within the grace period): it will detach
    NOBODY = "nobody"  # the Node is gone or runs no agent: nothing there to detach
    GRACE_EXPIRED = "grace-expired"  # a silent agent, past the grace period: it may still run there


def decide(
    node_program: Mapping[str, Any],
    nodes: Collection[str],
    agents: Agents,
    now: datetime.datetime,
    grace_seconds: float,
) -> Release:
    node = node_program["spec"]["nodeName"]
    if node not in nodes or node not in agents.present:
        return Release.NOBODY
    if node not in agents.silent:
        return Release.WAIT
    # The grace period runs from when the node object was deleted; one not yet deleted is now.
    since = node_program["metadata"].get("deletionTimestamp")
    if not since:
        return Release.WAIT
    deleted = datetime.datetime.fromisoformat(since.replace("Z", "+00:00"))
    return Release.GRACE_EXPIRED if (now - deleted).total_seconds() >= grace_seconds else Release.WAIT


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
