"""The installed agents as the cluster suite sees them: their pods, image, settings and metrics."""

from __future__ import annotations

from typing import Any

import kubernetes
from prometheus_client.parser import text_string_to_metric_families

from e2e.cluster_tests.conftest import CHART_LABELS, INSTALL_NAMESPACE
from e2e.kube import Kube

AGENT_LABELS = f"{CHART_LABELS},app.kubernetes.io/component=agent"
PACKETS = "bpfleet_pod_traffic_packets_total"
DEFAULT_BPFFS_ROOT = "/sys/fs/bpf/bpfleet"

Samples = dict[str, dict[tuple[tuple[str, str], ...], float]]


def daemon_set(kube: Kube) -> Any:
    [found] = (
        kubernetes.client.AppsV1Api(kube.api)
        .list_namespaced_daemon_set(INSTALL_NAMESPACE, label_selector=AGENT_LABELS)
        .items
    )
    return found


def image(kube: Kube) -> str:
    return str(daemon_set(kube).spec.template.spec.containers[0].image)


def bpffs_root(kube: Kube) -> str:
    env = {e.name: e.value for e in daemon_set(kube).spec.template.spec.containers[0].env or []}
    return str(env.get("BPFLEET_BPFFS_ROOT") or DEFAULT_BPFFS_ROOT)


def pods(kube: Kube) -> list[Any]:
    return list(kube.core.list_namespaced_pod(INSTALL_NAMESPACE, label_selector=AGENT_LABELS).items)


def ready_pod(kube: Kube, node: str) -> Any | None:
    """The agent pod on `node` that is Ready and not being deleted, if any."""
    for pod in pods(kube):
        conditions = {c.type: c.status for c in pod.status.conditions or []}
        if (
            pod.spec.node_name == node
            and not pod.metadata.deletion_timestamp
            and conditions.get("Ready") == "True"
        ):
            return pod
    return None


def metrics_path(pod: Any) -> str:
    [port] = [p.container_port for c in pod.spec.containers for p in c.ports or [] if p.name == "metrics"]
    return f"/api/v1/namespaces/{INSTALL_NAMESPACE}/pods/{pod.metadata.name}:{port}/proxy/metrics"


def scrape(kube: Kube, path: str) -> Samples:
    found: Samples = {}
    for family in text_string_to_metric_families(kube.kubectl("get", "--raw", path)):
        for sample in family.samples:
            found.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    return found


def packets(kube: Kube, node: str, namespace: str, pod: str, program: str) -> float | None:
    """What the agent on `node` exports as `pod`'s packets counted by `program`."""
    agent = ready_pod(kube, node)
    assert agent is not None, f"no ready agent on {node}"
    samples = scrape(kube, metrics_path(agent))
    return samples.get(PACKETS, {}).get((("namespace", namespace), ("pod", pod), ("program", program)))
