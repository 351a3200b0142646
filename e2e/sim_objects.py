"""The API objects of the pod simulator (e2e/podsim.py): its Pods, their status as kubelet would
report it, and its Node's status."""

from __future__ import annotations

import contextlib
import os
import platform
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import kubernetes.client
from kubernetes.client.exceptions import ApiException

from e2e.sim_cgroups import QosClass

CONTAINER_NAME = "app"
CONTAINER_IMAGE = "registry.invalid/sim:1"
CONTAINER_ID_SCHEME = "sim"
POD_IP = "127.0.0.1"
# Requests that make the apiserver compute the QoS class we claim in status (it rejects a mismatch).
_SIM_RESOURCES = {"cpu": "10m", "memory": "16Mi"}


# --- API objects ---------------------------------------------------------------------------------------

MERGE_PATCH = "application/merge-patch+json"
STRATEGIC_MERGE_PATCH = "application/strategic-merge-patch+json"
JSON_PATCH = "application/json-patch+json"


def replace_labels(send: Callable[[list[dict[str, Any]]], Any], labels: Mapping[str, str]) -> None:
    """Makes an object's labels exactly `labels`, through `send` (a JSON patch of the object)."""
    # JSON patch "add" on /metadata/labels replaces the whole map, present or not, in one request.
    send([{"op": "add", "path": "/metadata/labels", "value": dict(labels)}])


def fmt_labels(labels: Mapping[str, str]) -> str:
    return ",".join(f"{key}={value}" for key, value in sorted(labels.items())) or "-"


def timestamp() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def timestamp_micro() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def kube_arch() -> str:
    machine = platform.machine()
    return {"x86_64": "amd64", "aarch64": "arm64"}.get(machine, machine)


def _os_image() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/etc/os-release").read_text().splitlines():
            if line.startswith("PRETTY_NAME="):
                return line.partition("=")[2].strip('"')
    return "Linux"


def _container_resources(qos: QosClass) -> kubernetes.client.V1ResourceRequirements | None:
    if qos == "BestEffort":
        return None
    if qos == "Burstable":
        return kubernetes.client.V1ResourceRequirements(requests=dict(_SIM_RESOURCES))
    return kubernetes.client.V1ResourceRequirements(
        requests=dict(_SIM_RESOURCES), limits=dict(_SIM_RESOURCES)
    )


def pod_manifest(
    namespace: str, name: str, labels: Mapping[str, str], node_name: str, qos: QosClass
) -> kubernetes.client.V1Pod:
    container = kubernetes.client.V1Container(
        name=CONTAINER_NAME, image=CONTAINER_IMAGE, resources=_container_resources(qos)
    )
    # Without a node lifecycle heartbeat the node may turn NotReady; never let that evict the pod.
    tolerations = [
        kubernetes.client.V1Toleration(key=key, operator="Exists", effect="NoExecute")
        for key in ("node.kubernetes.io/not-ready", "node.kubernetes.io/unreachable")
    ]
    return kubernetes.client.V1Pod(
        api_version="v1",
        kind="Pod",
        metadata=kubernetes.client.V1ObjectMeta(name=name, namespace=namespace, labels=dict(labels)),
        spec=kubernetes.client.V1PodSpec(
            node_name=node_name,
            containers=[container],
            tolerations=tolerations,
            automount_service_account_token=False,
            termination_grace_period_seconds=0,
        ),
    )


def pod_status(qos: QosClass, container_id: str) -> dict[str, Any]:
    """The status kubelet would report for a pod whose only container has started and is ready."""
    now = timestamp()
    conditions = [
        {"type": kind, "status": "True", "lastTransitionTime": now}
        for kind in ("PodScheduled", "Initialized", "ContainersReady", "Ready")
    ]
    container_status = {
        "name": CONTAINER_NAME,
        "image": CONTAINER_IMAGE,
        "imageID": f"{CONTAINER_IMAGE.rpartition(':')[0]}@sha256:{'0' * 64}",
        "containerID": f"{CONTAINER_ID_SCHEME}://{container_id}",
        "ready": True,
        "started": True,
        "restartCount": 0,
        "state": {"running": {"startedAt": now}},
    }
    return {
        "status": {
            "phase": "Running",
            "qosClass": qos,
            "hostIP": POD_IP,
            "hostIPs": [{"ip": POD_IP}],
            "podIP": POD_IP,
            "podIPs": [{"ip": POD_IP}],
            "startTime": now,
            "conditions": conditions,
            "containerStatuses": [container_status],
        }
    }


def node_status(node_name: str) -> dict[str, Any]:
    now = timestamp()
    resources = {"cpu": str(os.cpu_count() or 1), "memory": "8Gi", "pods": "110"}
    uname = os.uname()
    return {
        "status": {
            "conditions": [
                {
                    "type": "Ready",
                    "status": "True",
                    "reason": "KubeletReady",
                    "message": "bpfleet pod simulator is posting ready status",
                    "lastHeartbeatTime": now,
                    "lastTransitionTime": now,
                }
            ],
            "addresses": [
                {"type": "InternalIP", "address": POD_IP},
                {"type": "Hostname", "address": node_name},
            ],
            "capacity": resources,
            "allocatable": resources,
            "nodeInfo": {
                "machineID": "",
                "systemUUID": "",
                "bootID": "",
                "kernelVersion": uname.release,
                "osImage": _os_image(),
                "containerRuntimeVersion": f"{CONTAINER_ID_SCHEME}://podsim",
                "kubeletVersion": "v0.0.0-podsim",
                "kubeProxyVersion": "",
                "operatingSystem": "linux",
                "architecture": kube_arch(),
            },
        }
    }


def is_status(exc: ApiException, *codes: int) -> bool:
    return exc.status in codes
