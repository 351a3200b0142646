"""Builders of API objects for unit tests."""

from __future__ import annotations

from typing import Any

from bpfleet_api import names

SKB_EGRESS = {"type": "CgroupSkb", "direction": "Egress"}


def node_program(
    name: str = "counter",
    namespace: str = "shop",
    node: str = "node-a",
    source: str = "int f(struct __sk_buff *skb) { return 1; }",
    selector: dict[str, Any] | None = None,
    attach: dict[str, Any] | None = None,
    parameters: dict[str, Any] | None = None,
    generation: int = 1,
    deleting: bool = False,
    **extra: Any,
) -> dict[str, Any]:
    """`extra`: more spec fields (programKind, scope, namespaces, maxMapBytes, ...)."""
    program_label = names.PROGRAM_LABEL
    if extra.get("programKind") == names.CLUSTER_PROGRAM_KIND:
        program_label = names.CLUSTER_PROGRAM_LABEL
    meta: dict[str, Any] = {
        "name": f"{name}-{node}",
        "namespace": namespace,
        "uid": f"uid-{name}-{node}",
        "generation": generation,
        "resourceVersion": "1",
        "labels": {names.NODE_LABEL: node, program_label: name},
        "finalizers": [names.AGENT_FINALIZER],
    }
    if deleting:
        meta["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    spec: dict[str, Any] = {
        "programName": name,
        "nodeName": node,
        "source": {"text": source, "sha256": "x"},
        "function": "f",
        "attach": attach or SKB_EGRESS,
        "podSelector": selector if selector is not None else {"matchLabels": {"app": "web"}},
    }
    if parameters:
        spec["parameters"] = parameters
    spec.update(extra)
    return {"metadata": meta, "spec": spec}


def cluster_program(name: str = "admin", namespace: str = "bpfleet-system", **kwargs: Any) -> dict[str, Any]:
    """A ClusterEbpfProgram's node object, in the system namespace unless told otherwise."""
    return node_program(name, namespace, programKind=names.CLUSTER_PROGRAM_KIND, **kwargs)


def pod(
    name: str,
    labels: dict[str, str] | None = None,
    namespace: str = "shop",
    phase: str = "Running",
    deleting: bool = False,
) -> dict[str, Any]:
    meta: dict[str, Any] = {
        "name": name,
        "namespace": namespace,
        "uid": f"uid-{name}",
        "labels": labels or {},
    }
    if deleting:
        meta["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    return {"metadata": meta, "status": {"phase": phase, "qosClass": "BestEffort"}}
