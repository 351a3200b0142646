"""Acceptance: the agent and the operator serve Prometheus metrics; pod-traffic-counter's map is
exported per pod, growing by what a pod sends."""

from __future__ import annotations

import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from e2e.harness import ManagedProcess, wait_for
from e2e.kube import Kube
from e2e.tools import REPO_ROOT

EXAMPLE = REPO_ROOT / "examples" / "pod-traffic-counter.yaml"
PROGRAM = "web-egress-traffic"
IPV4_UDP_HEADERS = 20 + 8


def get(process: ManagedProcess, path: str) -> tuple[int, str]:
    url = f"http://{process.env['BPFLEET_METRICS_ADDRESS']}{path}"
    with urllib.request.urlopen(url, timeout=5) as response:
        return response.status, response.read().decode()


def scrape(process: ManagedProcess) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    """sample name -> {sorted labels: value}"""
    status, body = get(process, "/metrics")
    assert status == 200
    found: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in text_string_to_metric_families(body):
        for sample in family.samples:
            found.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    return found


def pod_sample(samples: dict, name: str, namespace: str, pod: str) -> float | None:
    return samples.get(name, {}).get((("namespace", namespace), ("pod", pod), ("program", PROGRAM)))


def test_agent_exports_per_pod_traffic_and_its_own_state(kube: Kube, node_a, namespace: str):
    web_1 = node_a.create_pod(namespace, "web-1", {"app": "web"})
    node_a.create_pod(namespace, "web-2", {"app": "web"})
    db = node_a.create_pod(namespace, "db-1", {"app": "db"})
    kube.apply(namespace, EXAMPLE)
    wait_for("READY True", lambda: kube.is_ready(namespace, PROGRAM), timeout=10)

    assert get(node_a.agent, "/healthz") == (200, "ok\n")
    samples = scrape(node_a.agent)
    attached = samples["bpfleet_agent_pods_attached"]
    assert attached[(("namespace", namespace), ("program", PROGRAM))] == 2
    assert samples["bpfleet_agent_programs_loaded"][()] >= 1
    assert samples["bpfleet_agent_compile_seconds_count"][()] >= 1
    assert samples["bpfleet_agent_attach_seconds_count"][()] >= 2
    assert samples["bpfleet_agent_reconcile_seconds_count"][()] >= 1
    failures = samples.get("bpfleet_agent_failures", {})  # a family without samples is not listed
    assert not any(labels[0] == ("namespace", namespace) for labels in failures)

    packets, nbytes = "bpfleet_pod_traffic_packets_total", "bpfleet_pod_traffic_bytes_total"
    before_packets = pod_sample(samples, packets, namespace, "web-1") or 0
    before_bytes = pod_sample(samples, nbytes, namespace, "web-1") or 0
    assert web_1.send_udp("127.0.0.1", 9, count=25, size=100).sent == 25
    assert db.send_udp("127.0.0.1", 9, count=25, size=100).sent == 25

    after = scrape(node_a.agent)
    assert pod_sample(after, packets, namespace, "web-1") == before_packets + 25
    assert pod_sample(after, nbytes, namespace, "web-1") == before_bytes + 25 * (100 + IPV4_UDP_HEADERS)
    assert pod_sample(after, packets, namespace, "db-1") is None  # not selected: not in the map
    assert pod_sample(after, packets, namespace, "web-2") is None  # selected, silent: no entry yet


def test_operator_exports_reconcile_durations_and_programs_by_ready(kube: Kube, operator, node_a, namespace):
    reconciles = scrape(operator)["bpfleet_operator_reconcile_seconds_count"][()]
    node_a.create_pod(namespace, "web-1", {"app": "web"})
    kube.apply(namespace, EXAMPLE)
    wait_for("READY True", lambda: kube.is_ready(namespace, PROGRAM), timeout=10)

    # Other tests' programs may still be around, so only this one is known to be Ready.
    wait_for(
        "a Ready program counted",
        lambda: scrape(operator)["bpfleet_operator_programs"][(("ready", "True"),)] >= 1,
    )
    samples = scrape(operator)
    assert samples["bpfleet_operator_reconcile_seconds_count"][()] > reconciles
    assert samples["bpfleet_operator_reconcile_seconds_bucket"][(("le", "+Inf"),)] > reconciles
    assert (("ready", "False"),) in samples["bpfleet_operator_programs"]


@pytest.mark.parametrize(
    ("builtin", "function", "attach", "metric"),
    [
        (
            "dns-query-counter",
            "count_dns_queries",
            {"type": "CgroupSkb", "direction": "Egress"},
            "bpfleet_pod_dns_queries_total",
        ),
        (
            "syscall-counter",
            "count_syscalls",
            {"type": "Tracepoint", "name": "raw_syscalls:sys_enter"},
            "bpfleet_pod_syscalls_total",
        ),
    ],
)
def test_counting_builtins_export_their_counts_per_pod(
    kube: Kube, node_a, namespace: str, builtin, function, attach, metric
):
    web = node_a.create_pod(namespace, "web-1", {"app": "web"})
    program = {
        "apiVersion": "bpfleet.io/v1alpha1",
        "kind": "EbpfProgram",
        "metadata": {"name": builtin},
        "spec": {"source": {"builtin": builtin}, "function": function, "attach": attach, "podSelector": {}},
    }
    kube.apply(namespace, program)
    wait_for(f"{builtin} ready", lambda: kube.is_ready(namespace, builtin), timeout=15)
    assert web.send_udp("127.0.0.1", 53, count=6).sent == 6
    labels = (("namespace", namespace), ("pod", "web-1"), ("program", builtin))
    wait_for(
        f"{metric} for web-1", lambda: scrape(node_a.agent).get(metric, {}).get(labels, 0) >= 6, timeout=10
    )
