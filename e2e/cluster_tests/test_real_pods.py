"""Programs on pods that kubelet and the container runtime made: a Deployment's pods, checked with
bpftool on the cgroup their processes are in, and a pod that starts after the program, counted
from its first packet."""

from __future__ import annotations

from typing import Any

import pytest

from e2e.cluster_tests import agents, nodeside, pods
from e2e.harness import wait_for
from e2e.kube import Kube
from e2e.tools import REPO_ROOT

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(600)]

COUNTER = REPO_ROOT / "examples" / "pod-traffic-counter.yaml"
PROGRAM = "web-egress-traffic"  # selects app=web
FIRST_PACKETS = 20


def deployment(name: str, replicas: int, labels: dict[str, str]) -> dict[str, Any]:
    pod = pods.client("x", labels)
    template = {"metadata": {"labels": labels}, "spec": pod["spec"]}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {"replicas": replicas, "selector": {"matchLabels": labels}, "template": template},
    }


def program_ids(found: dict[str, Any], uid: str) -> list[int]:
    return [int(p["id"]) for p in found["cgroups"][uid]["programs"]]


def test_a_deployments_pods_get_the_program_on_their_real_cgroups(kube: Kube, namespace: str) -> None:
    kube.apply(namespace, deployment("web", 2, {"app": "web"}))
    kube.apply(namespace, deployment("db", 1, {"app": "db"}))
    kube.kubectl("rollout", "status", "-n", namespace, "deployment/web", "deployment/db", "--timeout=300s")
    kube.apply(namespace, COUNTER)
    wait_for("READY True", lambda: kube.is_ready(namespace, PROGRAM), timeout=180, interval=1)
    assert kube.program(namespace, PROGRAM)["status"]["pods"] == {"selected": 2, "attached": 2, "failed": 0}

    listed = kube.core.list_namespaced_pod(namespace).items
    web = [p for p in listed if p.metadata.labels["app"] == "web"]
    [db] = [p for p in listed if p.metadata.labels["app"] == "db"]
    for node in {p.spec.node_name for p in listed}:
        here = [p for p in listed if p.spec.node_name == node]
        uids = [p.metadata.uid for p in here]
        found = nodeside.inspect(kube, namespace, node, agents.image(kube), uids, agents.bpffs_root(kube))
        assert sorted(found["cgroups"]) == sorted(uids), found  # every pod's processes are in its cgroup
        for pod in here:
            ids = program_ids(found, pod.metadata.uid)
            if pod in web:
                # One program, of the egress skb type, on the pod-level cgroup kubelet and runc made.
                [attached] = found["cgroups"][pod.metadata.uid]["programs"]
                assert attached["attach_type"] == "cgroup_inet_egress", attached
                assert f"pod{pod.metadata.uid}" in found["cgroups"][pod.metadata.uid]["path"].replace(
                    "_", "-"
                )
            else:
                assert pod.metadata.uid == db.metadata.uid and ids == [], found


def late_pod(name: str) -> dict[str, Any]:
    """Sends FIRST_PACKETS UDP datagrams to its node as the first thing its container does."""
    send = pods.SEND_UDP + "\nimport time\ntime.sleep(1e9)\n"
    pod = pods.client(name, {"app": "web"})
    container = pod["spec"]["containers"][0]
    container["command"] = ["python", "-c", send, "$(HOST_IP)", "9", str(FIRST_PACKETS), "100"]
    container["env"] = [{"name": "HOST_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.hostIP"}}}]
    return pod


def test_a_pod_started_after_the_program_is_counted_from_its_first_packet(kube: Kube, namespace: str) -> None:
    kube.apply(namespace, COUNTER)
    wait_for("READY True", lambda: kube.is_ready(namespace, PROGRAM), timeout=180, interval=1)
    pods.start(kube, namespace, [late_pod("web-late")])
    node = pods.node(kube, namespace, "web-late")
    wait_for(
        "the late pod attached",
        lambda: kube.program(namespace, PROGRAM)["status"]["pods"]["attached"] == 1,
        timeout=60,
        interval=0.5,
    )
    # Every datagram it sent was counted, so the program was on its cgroup before the first one.
    assert agents.packets(kube, node, namespace, "web-late", PROGRAM) == FIRST_PACKETS
