"""The entries the EbpfProgramPlacements give this node, merged with its EbpfNodeState's own.

A placement names one program's version for every node its nodeSelector picks; the node's spec
names a program only where this node must differ (a staged rollout's step), and then its entry
wins. Placements are hostile input like spec entries: one may only place a program whose versions
live in the placement's own namespace (an EbpfProgram of that namespace, or a ClusterEbpfProgram
in the system namespace), so that whoever can write placements in one namespace places nothing of
another's. The entries then go through the same trust checks as the spec's (intake.VersionReader).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from bpfleet_api import selectors
from node_agent.errors import TrustViolation
from node_agent.intake import Entry, parse_entry
from node_agent.model import EntryKey, Trust, version_namespace


def placed_entries(
    placements: Iterable[Mapping[str, Any]], labels: Mapping[str, str], trust: Trust
) -> tuple[list[Entry], list[str]]:
    """The entries of the placements whose nodeSelector picks a node with `labels`, and what was
    wrong with those refused. Of two placements of one program, the first by namespace and name
    wins (the operator writes one; the agent does not rely on it)."""
    found: dict[EntryKey, Entry] = {}
    problems = []
    for placement in sorted(placements, key=_where):
        namespace, name = _where(placement)
        spec = placement.get("spec")
        try:
            entry = parse_entry(spec)
            home = version_namespace(entry.key, trust)
            if home != namespace:
                raise TrustViolation(
                    f"it places {entry.key.kind} {entry.key.namespace}/{entry.key.name},"
                    f" whose placements live in {home}"
                )
            if not selectors.matches(_selector(spec), labels):
                continue
        except (AttributeError, KeyError, TypeError, ValueError, TrustViolation) as e:
            problems.append(f"placement {namespace}/{name}: {e}")
            continue
        found.setdefault(entry.key, entry)
    return list(found.values()), problems


def merged(placed: Iterable[Entry], own: Iterable[Entry]) -> list[Entry]:
    """The node's entries: the placements', with the node's own entries winning over them."""
    by_key = {entry.key: entry for entry in placed}
    by_key.update((entry.key, entry) for entry in own)
    return list(by_key.values())


def _where(placement: Mapping[str, Any]) -> tuple[str, str]:
    meta = placement.get("metadata") or {}
    return str(meta.get("namespace") or ""), str(meta.get("name") or "")


def _selector(spec: Any) -> Mapping[str, Any] | None:
    selector = spec.get("nodeSelector")
    if selector is not None and not isinstance(selector, Mapping):
        raise ValueError(f"nodeSelector {selector!r} is not a label selector")
    return selector
