"""What a program asks of its nodes: which nodes it targets, and the EbpfProgramVersion (its source
and resolved build inputs, stored once for every node). Pure: no API calls."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from bpfleet_api import names, selectors, versions
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
class Version:
    """One program's version for every node: what the nodes run, made of the program, its resolved
    source, its kind and its reach."""

    program: Mapping[str, Any]
    source: ResolvedSource
    kind: ProgramKind = NAMESPACED
    reach: Reach = NO_REACH

    def spec(self) -> dict[str, Any]:
        """The version's spec, contentHash included."""
        kind, reach, spec = self.kind, self.reach, self.program["spec"]
        resolved: dict[str, Any] = {
            "programKind": kind.kind,
            "programName": self.program["metadata"]["name"],
            "source": self.source.as_spec(),
            "function": spec["function"],
            "attach": spec["attach"],
        }
        if not kind.namespaced:
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
        return versions.with_hash(resolved)

    def body(self) -> dict[str, Any]:
        """The EbpfProgramVersion object."""
        kind, meta = self.kind, self.program["metadata"]
        key = kind.key(meta.get("namespace"), meta["name"])
        spec = self.spec()
        return {
            "apiVersion": names.API_VERSION,
            "kind": names.VERSION_KIND,
            "metadata": {
                "name": names.version_name(kind.kind, key.namespace, key.name, spec[versions.HASH_FIELD]),
                "namespace": kind.node_namespace(key),
                "labels": {kind.label: names.label_value(meta["name"])},
                # Garbage collection removes versions with their program (a namespaced object may
                # be owned by a cluster-scoped one).
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
            "spec": spec,
        }
