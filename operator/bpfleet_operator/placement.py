"""A program's placement (one version for every node its nodeSelector picks) and the node entries
that must differ from it. Pure: no API calls.

Every node whose agent reads placements runs the placement's version unless its EbpfNodeState
names the program itself. So a rollout or a deletion of a program is one placement write, not a
spec write per node. A node's spec names the program only where it must:

- its agent does not read placements (an older agent, during an upgrade of the DaemonSet);
- it runs another version than the placement (a staged rollout's updated nodes, until every node
  is updated and the placement moves to the new version);
- it was named there and the placement the operator has seen does not give it that version yet:
  removing its entry before would have the node fall back, for a moment, to the old version.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from typing import Any

from bpfleet_api import selectors
from bpfleet_operator.desired import Entry
from bpfleet_operator.kinds import ProgramKey
from bpfleet_operator.rollout import Plan

Spec = dict[str, Any]  # an EbpfProgramPlacement's spec: an entry and a nodeSelector


def spec(key: ProgramKey, generation: int, version: str, node_selector: Mapping[str, Any] | None) -> Spec:
    found: Spec = {
        "kind": key.kind,
        "namespace": key.namespace,
        "name": key.name,
        "generation": generation,
        "version": version,
    }
    if node_selector:
        found["nodeSelector"] = dict(node_selector)
    return found


def placed_version(plan: Plan, targeted: Sequence[str]) -> str:
    """The version the placement names: the new one, unless a staged rollout has not brought every
    targeted node to it yet (halted or not), when the others keep the previous one."""
    if plan.previous is not None and plan.updated < len(targeted):
        return plan.previous
    return plan.version


def running(
    targeted: Sequence[str],
    named: Mapping[str, Entry],
    placed: Spec | None,
    readers: Collection[str],
    labels: Mapping[str, Mapping[str, str]],
) -> dict[str, str]:
    """node -> the version it is asked to run now: its own entry's, else the placement's where its
    agent reads placements and the placement's nodeSelector picks it."""
    found = {}
    for node in targeted:
        if node in named:
            found[node] = str(named[node]["version"])
        elif (
            placed is not None
            and node in readers
            and selectors.matches(placed.get("nodeSelector"), labels.get(node, {}))
        ):
            found[node] = str(placed["version"])
    return found


def node_entries(
    entries: Mapping[str, Entry],
    version: str,
    readers: Collection[str],
    named: Mapping[str, Entry],
    seen: Spec | None,
) -> dict[str, Entry]:
    """Of `entries` (node -> what it should run), those its EbpfNodeState must name, with the
    placement naming `version`; `named`: what the nodes' specs name now; `seen`: the placement as
    the operator's watch shows it."""
    seen_version = seen.get("version") if seen is not None else None
    return {
        node: entry
        for node, entry in entries.items()
        if node not in readers
        or entry["version"] != version
        or (node in named and named[node]["version"] == entry["version"] != seen_version)
    }
