"""What the operator tests against a real API server share: the agents' parts (their BpfleetNode
and heartbeat, reporting a node object, dropping their finalizer), and reads of programs, node
objects and events."""

from __future__ import annotations

import datetime
from typing import Any

from kubernetes.client import V1Namespace, V1ObjectMeta
from kubernetes.client.exceptions import ApiException

from bpfleet_api import conditions, names, patching
from e2e.kube import Kube


def delete_quietly(delete: Any) -> None:
    try:
        delete()
    except ApiException as e:
        if e.status != 404:
            raise


def create_namespace(
    kube: Kube, name: str, labels: dict[str, str] | None = None, annotations: dict[str, str] | None = None
) -> str:
    kube.core.create_namespace(
        V1Namespace(metadata=V1ObjectMeta(name=name, labels=labels, annotations=annotations))
    )
    return name


def heartbeat_at(seconds_ago: float = 0) -> str:
    moment = datetime.datetime.now(datetime.UTC) - datetime.timedelta(seconds=seconds_ago)
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def agent_starts(kube: Kube, node: str, heartbeat: str | None = None) -> None:
    """What an agent does when it starts: create its node's BpfleetNode, then heartbeat."""
    body = {"apiVersion": names.API_VERSION, "kind": names.NODE_STATE_KIND, "metadata": {"name": node}}
    kube.custom.create_cluster_custom_object(names.GROUP, names.VERSION, names.NODE_STATE_PLURAL, body)
    agent_heartbeats(kube, node, heartbeat or heartbeat_at())


def agent_heartbeats(kube: Kube, node: str, heartbeat: str) -> None:
    patching.merge_patch(
        kube.custom,
        names.NODE_STATE_PLURAL,
        None,
        node,
        {"status": {"lastHeartbeat": heartbeat}},
        status=True,
    )


def agent_removed(kube: Kube, node: str) -> None:
    """Its BpfleetNode deleted (the agent uninstalled from that node, or its Node collected)."""
    delete_quietly(
        lambda: kube.custom.delete_cluster_custom_object(
            names.GROUP, names.VERSION, names.NODE_STATE_PLURAL, node
        )
    )


def agent_reports_ready(kube: Kube, node_program: dict[str, Any]) -> None:
    """What an agent writes once its node runs the program's current spec."""
    meta = node_program["metadata"]
    ready = conditions.condition(conditions.READY, True, "Ready", "attached", meta["generation"])
    ready["lastTransitionTime"] = heartbeat_at()
    status = {
        "observedGeneration": meta["generation"],
        "conditions": [ready],
        "pods": {"selected": 0, "attached": 0, "failed": 0},
    }
    patching.merge_patch(
        kube.custom,
        names.NODE_PROGRAM_PLURAL,
        meta["namespace"],
        meta["name"],
        {"status": status},
        status=True,
    )


def agents_detach(kube: Kube) -> None:
    """What the agents do once they have detached: drop their finalizer from deleted node objects."""
    listed = kube.custom.list_cluster_custom_object(names.GROUP, names.VERSION, names.NODE_PROGRAM_PLURAL)
    for obj in listed["items"]:
        meta = obj["metadata"]
        if meta.get("deletionTimestamp") and names.AGENT_FINALIZER in (meta.get("finalizers") or []):
            finalizers = [f for f in meta["finalizers"] if f != names.AGENT_FINALIZER]
            patching.merge_patch(
                kube.custom,
                names.NODE_PROGRAM_PLURAL,
                meta["namespace"],
                meta["name"],
                {"metadata": {"finalizers": finalizers}},
            )


def node_objects(kube: Kube, label: str, program: str) -> list[dict[str, Any]]:
    """Node objects of a program in every namespace, by its label."""
    listed = kube.custom.list_cluster_custom_object(
        names.GROUP,
        names.VERSION,
        names.NODE_PROGRAM_PLURAL,
        label_selector=f"{label}={names.label_value(program)}",
    )
    return sorted(listed["items"], key=lambda o: o["spec"]["nodeName"])


def reconciled(program: dict[str, Any] | None) -> bool:
    status = (program or {}).get("status") or {}
    return program is not None and status.get("observedGeneration") == program["metadata"]["generation"]


def ready_message(program: dict[str, Any]) -> str:
    return next(c["message"] for c in program["status"]["conditions"] if c["type"] == "Ready")


def events_of(kube: Kube, namespace: str, name: str) -> list[tuple[str, str]]:
    return [(e.type, e.reason) for e in kube.events(namespace, name)]
