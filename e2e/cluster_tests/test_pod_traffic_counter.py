"""examples/pod-traffic-counter.yaml on a real cluster: attached to every selected pod, and the
agent of a pod's node exports what that pod sends as Prometheus metrics."""

from __future__ import annotations

import pytest
from prometheus_client.parser import text_string_to_metric_families

from e2e.cluster_tests import pods
from e2e.harness import wait_for
from e2e.kube import Kube
from e2e.tools import REPO_ROOT

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(600)]

EXAMPLE = REPO_ROOT / "examples" / "pod-traffic-counter.yaml"
PROGRAM = "web-egress-traffic"
PACKETS, BYTES = "bpfleet_pod_traffic_packets_total", "bpfleet_pod_traffic_bytes_total"
IPV4_UDP_HEADERS = 20 + 8

Samples = dict[str, dict[tuple[tuple[str, str], ...], float]]


def scrape(kube: Kube, metrics: str) -> Samples:
    """sample name -> {sorted labels: value}"""
    body = kube.kubectl("get", "--raw", metrics)
    found: Samples = {}
    for family in text_string_to_metric_families(body):
        for sample in family.samples:
            found.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    return found


def pod_sample(samples: Samples, name: str, namespace: str, pod: str) -> float | None:
    return samples.get(name, {}).get((("namespace", namespace), ("pod", pod), ("program", PROGRAM)))


def test_attaches_to_selected_pods_and_exports_their_traffic(
    kube: Kube, namespace: str, agent_metrics: dict[str, str]
) -> None:
    web = ["web-1", "web-2"]
    pods.start(
        kube,
        namespace,
        [pods.server(), *(pods.client(p, {"app": "web"}) for p in web), pods.client("db-1", {"app": "db"})],
    )
    kube.apply(namespace, EXAMPLE)
    wait_for("READY True", lambda: kube.is_ready(namespace, PROGRAM), timeout=180, interval=1)

    status = kube.program(namespace, PROGRAM)["status"]
    assert status["pods"]["attached"] == status["pods"]["selected"] == len(web)
    assert status["pods"]["failed"] == 0
    printed = kube.kubectl("get", "ebpf", "-n", namespace, PROGRAM)
    assert "True" in printed and f"{len(web)}/{len(web)}" in printed

    node = pods.node(kube, namespace, "web-1")
    agent = agent_metrics[node]
    web_here = sum(pods.node(kube, namespace, p) == node for p in web)
    before = scrape(kube, agent)
    assert before["bpfleet_agent_pods_attached"][(("namespace", namespace), ("program", PROGRAM))] == web_here
    before_packets = pod_sample(before, PACKETS, namespace, "web-1") or 0
    before_bytes = pod_sample(before, BYTES, namespace, "web-1") or 0

    server = pods.ip(kube, namespace, pods.SERVER)
    pods.send_udp(kube, namespace, "web-1", server, 9, count=25, size=100)
    pods.send_udp(kube, namespace, "db-1", server, 9, count=25, size=100)

    after = scrape(kube, agent)
    assert pod_sample(after, PACKETS, namespace, "web-1") == before_packets + 25
    assert pod_sample(after, BYTES, namespace, "web-1") == before_bytes + 25 * (100 + IPV4_UDP_HEADERS)
    # db-1 is not selected, wherever it runs: no agent has an entry for it.
    for other in agent_metrics.values():
        assert pod_sample(scrape(kube, other), PACKETS, namespace, "db-1") is None
