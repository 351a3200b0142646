"""Builders of API objects for unit tests."""

from __future__ import annotations

from typing import Any

from bpfleet_api import names, versions
from node_agent.intake import Entry
from node_agent.model import EntryKey, NodeProgram, Trust, check_hash
from node_agent.reconcile import ProgramReport
from node_agent.status import program_entry

SKB_EGRESS = {"type": "CgroupSkb", "direction": "Egress"}


def node_program(
    name: str = "counter",
    namespace: str = "shop",
    source: str = "int f(struct __sk_buff *skb) { return 1; }",
    selector: dict[str, Any] | None = None,
    attach: dict[str, Any] | None = None,
    parameters: dict[str, Any] | None = None,
    generation: int = 1,
    **extra: Any,
) -> dict[str, Any]:
    """An EbpfProgramVersion of program `name`, in `namespace` (where it was read from).
    `extra`: more spec fields (programKind, scope, namespaces, maxMapBytes, ...). `generation` is the
    entry's (see entry_of). Its contentHash is set by parsed() and node_state(), so that tests may
    change the spec first."""
    spec: dict[str, Any] = {
        "programKind": names.PROGRAM_KIND,
        "programName": name,
        "source": {"text": source, "sha256": "x"},
        "function": "f",
        "attach": attach or SKB_EGRESS,
        "podSelector": selector if selector is not None else {"matchLabels": {"app": "web"}},
    }
    if parameters:
        spec["parameters"] = parameters
    spec.update(extra)
    return {
        "metadata": {"name": f"{name}-v1", "namespace": namespace, "uid": f"uid-{namespace}-{name}"},
        "spec": spec,
        "generation": generation,  # the entry's, not the object's: see entry_of()
    }


def cluster_program(name: str = "admin", namespace: str = "bpfleet-system", **kwargs: Any) -> dict[str, Any]:
    """A ClusterEbpfProgram's version, in the system namespace unless told otherwise."""
    return node_program(name, namespace, programKind=names.CLUSTER_PROGRAM_KIND, **kwargs)


def hashed(version: dict[str, Any]) -> dict[str, Any]:
    """The version with the contentHash of its spec as it is now."""
    version["spec"] = versions.with_hash(version["spec"])
    return version


def entry_of(version: dict[str, Any]) -> dict[str, Any]:
    """The EbpfNodeState entry that names this version, as the operator writes it."""
    spec = version["spec"]
    cluster = spec.get("programKind") == names.CLUSTER_PROGRAM_KIND
    return {
        "kind": spec.get("programKind") or names.PROGRAM_KIND,
        "namespace": "" if cluster else version["metadata"]["namespace"],
        "name": spec["programName"],
        "generation": version.get("generation", 1),
        "version": version["metadata"]["name"],
    }


def parsed(version: dict[str, Any], trust: Trust | None = None) -> NodeProgram:
    """The NodeProgram the agent makes of the entry that names this version."""
    entry = entry_of(hashed(version))
    check_hash(version)
    key = EntryKey(entry["kind"], entry["namespace"], entry["name"])
    return NodeProgram.from_entry(key, entry["generation"], version, trust or Trust())


def node_state(
    programs: list[dict[str, Any]], node: str = "node-a", generation: int = 1, status: Any = None
) -> dict[str, Any]:
    """This node's EbpfNodeState with one entry per version."""
    state: dict[str, Any] = {
        "metadata": {"name": node, "generation": generation, "resourceVersion": "1", "uid": f"uid-{node}"},
        "spec": {"nodeName": node, "programs": [entry_of(hashed(v)) for v in programs]},
    }
    if status is not None:
        state["status"] = status
    return state


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


def report_entry(report: ProgramReport, serving: str | None = "counter-v1") -> dict[str, Any]:
    """The status entry the agent writes for one report (of an EbpfProgram entry in its namespace)."""
    entry = Entry(
        EntryKey(names.PROGRAM_KIND, report.namespace, report.name), report.generation, "counter-v1"
    )
    return program_entry(report, entry, serving)
