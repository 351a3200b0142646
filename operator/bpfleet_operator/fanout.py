"""Which EbpfNodePrograms a program should have, one per targeted node. Pure: no API calls."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

from bpfleet_api import names, selectors
from bpfleet_operator.builtins import metrics_for
from bpfleet_operator.sources import ResolvedSource

_MAX_NAME = 253


def node_program_name(program: str, node: str) -> str:
    name = f"{program}-{node}"
    if len(name) <= _MAX_NAME:
        return name
    digest = hashlib.sha256(name.encode()).hexdigest()[:10]
    return f"{name[: _MAX_NAME - 11]}-{digest}"


def targeted_nodes(spec: Mapping[str, Any], nodes: Mapping[str, Mapping[str, str]]) -> list[str]:
    """Names of the nodes (name -> labels) that the program's nodeSelector picks."""
    return sorted(
        name for name, labels in nodes.items() if selectors.matches(spec.get("nodeSelector"), labels)
    )


def node_program_spec(program: Mapping[str, Any], node: str, source: ResolvedSource) -> dict[str, Any]:
    spec = program["spec"]
    resolved: dict[str, Any] = {
        "programName": program["metadata"]["name"],
        "nodeName": node,
        "source": source.as_spec(),
        "function": spec["function"],
        "attach": spec["attach"],
        "podSelector": spec.get("podSelector") or {},
    }
    if spec.get("parameters"):
        resolved["parameters"] = spec["parameters"]
    if metrics := metrics_for(spec):
        resolved["metrics"] = metrics
    return resolved


def node_program_object(program: Mapping[str, Any], node: str, source: ResolvedSource) -> dict[str, Any]:
    meta = program["metadata"]
    return {
        "apiVersion": names.API_VERSION,
        "kind": names.NODE_PROGRAM_KIND,
        "metadata": {
            "name": node_program_name(meta["name"], node),
            "namespace": meta["namespace"],
            "labels": {names.NODE_LABEL: node, names.PROGRAM_LABEL: meta["name"]},
            # The agent removes this once it has detached; created with it so that a deletion
            # racing the agent's first look still waits for the agent.
            "finalizers": [names.AGENT_FINALIZER],
            # Garbage collection removes node objects if the program is ever removed without us.
            "ownerReferences": [
                {
                    "apiVersion": names.API_VERSION,
                    "kind": names.PROGRAM_KIND,
                    "name": meta["name"],
                    "uid": meta["uid"],
                    "controller": True,
                }
            ],
        },
        "spec": node_program_spec(program, node, source),
    }
