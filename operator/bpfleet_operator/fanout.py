"""Which EbpfNodePrograms a program should have, one per targeted node, and what to change to get
there from the ones that exist. Pure: no API calls."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from bpfleet_api import names, selectors
from bpfleet_operator.builtins import metrics_for
from bpfleet_operator.kinds import NAMESPACED, ProgramKind
from bpfleet_operator.sources import ResolvedSource
from bpfleet_operator.tenancy import Reach, scope

NO_REACH = Reach()


def targeted_nodes(spec: Mapping[str, Any], nodes: Mapping[str, Mapping[str, str]]) -> list[str]:
    """Names of the nodes (name -> labels) that the program's nodeSelector picks."""
    return sorted(
        name for name, labels in nodes.items() if selectors.matches(spec.get("nodeSelector"), labels)
    )


@dataclass(frozen=True)
class NodeObjects:
    """The node objects of one program: every one is made of the same program, source, kind and
    reach, and only the node differs."""

    program: Mapping[str, Any]
    source: ResolvedSource
    kind: ProgramKind = NAMESPACED
    reach: Reach = NO_REACH

    def spec(self, node: str) -> dict[str, Any]:
        kind, reach, spec = self.kind, self.reach, self.program["spec"]
        resolved: dict[str, Any] = {
            "programName": self.program["metadata"]["name"],
            "nodeName": node,
            "source": self.source.as_spec(),
            "function": spec["function"],
            "attach": spec["attach"],
        }
        if not kind.namespaced:
            # Absent means EbpfProgram: node objects of EbpfPrograms stay as they were before tenancy.
            resolved["programKind"] = kind.kind
            resolved["scope"] = scope(kind, spec)
        if scope(kind, spec) == names.SCOPE_PODS:
            resolved["podSelector"] = spec.get("podSelector") or {}
            if reach.namespaces is not None:
                resolved["namespaces"] = list(reach.namespaces)
        if reach.max_map_bytes:
            resolved["maxMapBytes"] = reach.max_map_bytes
        if spec.get("parameters"):
            resolved["parameters"] = spec["parameters"]
        if metrics := metrics_for(spec):
            resolved["metrics"] = metrics
        return resolved

    def for_node(self, node: str) -> dict[str, Any]:
        kind, meta = self.kind, self.program["metadata"]
        key = kind.key(meta.get("namespace"), meta["name"])
        return {
            "apiVersion": names.API_VERSION,
            "kind": names.NODE_PROGRAM_KIND,
            "metadata": {
                "name": names.node_program_name(kind.kind, key.namespace, key.name, node),
                "namespace": kind.node_namespace(key),
                "labels": {
                    names.NODE_LABEL: names.label_value(node),
                    kind.label: names.label_value(meta["name"]),
                },
                # The agent removes this once it has detached; created with it so that a deletion
                # racing the agent's first look still waits for the agent.
                "finalizers": [names.AGENT_FINALIZER],
                # Garbage collection removes node objects if the program is ever removed without us
                # (a namespaced object may be owned by a cluster-scoped one).
                "ownerReferences": [
                    {
                        "apiVersion": names.API_VERSION,
                        "kind": kind.kind,
                        "name": meta["name"],
                        "uid": meta["uid"],
                        "controller": True,
                    }
                ],
            },
            "spec": self.spec(node),
        }


@dataclass
class Plan:
    """What to do to get from the existing node objects to the wanted ones."""

    create: list[dict[str, Any]] = field(default_factory=list)
    update: list[tuple[dict[str, Any], dict[str, Any]]] = field(default_factory=list)  # (current, wanted)
    release: list[dict[str, Any]] = field(default_factory=list)  # delete (and unblock when node gone)


def _deleting(obj: Mapping[str, Any]) -> bool:
    return bool(obj["metadata"].get("deletionTimestamp"))


def needs_update(current: Mapping[str, Any], wanted: Mapping[str, Any]) -> bool:
    meta, wanted_meta = current["metadata"], wanted["metadata"]
    labels = meta.get("labels") or {}
    owners = {ref.get("uid") for ref in meta.get("ownerReferences") or []}
    return (
        current.get("spec") != wanted["spec"]
        or any(labels.get(k) != v for k, v in wanted_meta["labels"].items())
        or any(ref["uid"] not in owners for ref in wanted_meta["ownerReferences"])
    )


def plan(wanted: Mapping[str, dict[str, Any]], existing: Sequence[dict[str, Any]]) -> Plan:
    """`wanted`: node -> node object. Node objects are matched by spec.nodeName, not by name, so that
    those named the old way (`<program>-<node>`) are adopted rather than duplicated."""
    by_node: defaultdict[str, list[dict[str, Any]]] = defaultdict(list)
    for obj in existing:
        by_node[obj["spec"]["nodeName"]].append(obj)
    result = Plan()
    for node, body in wanted.items():
        objs = by_node.pop(node, [])
        live = [o for o in objs if not _deleting(o)]
        if not objs:
            result.create.append(body)
            continue
        if not live:
            continue  # still detaching: its deletion event brings the program back here
        name = body["metadata"]["name"]
        keep = next((o for o in live if o["metadata"]["name"] == name), None)
        keep = keep or min(live, key=lambda o: o["metadata"]["name"])
        if needs_update(keep, body):
            result.update.append((keep, body))
        # Two objects for one node would make the agent serve the program twice.
        result.release += [o for o in live if o is not keep]
    for objs in by_node.values():
        result.release += objs
    return result
