"""Acceptance: the traffic counter's CO-RE object, from a ConfigMap, runs on a node through the real
operator and agent, and counts the selected pod's traffic (the object's base64 has '+' and '/',
which the version CRD once refused)."""

from __future__ import annotations

import base64
from pathlib import Path

from e2e.harness import wait_for
from e2e.kube import Kube, cgroup_id, cgroup_programs, traffic_counts
from e2e.tools import REPO_ROOT

OBJECT = REPO_ROOT / "build" / "bytecode" / "pod-traffic-counter.bpf.o"  # make bytecode
PROGRAM = "elf-counter"


def test_a_config_map_elf_is_ready_and_counts_its_pods_traffic(kube: Kube, node_a, namespace: str):
    data = base64.b64encode(OBJECT.read_bytes()).decode()
    assert "+" in data and "/" in data
    kube.core.create_namespaced_config_map(
        namespace, {"metadata": {"name": "counter-elf"}, "binaryData": {"prog.bpf.o": data}}
    )
    web = node_a.create_pod(namespace, "web-1", {"app": "web"})
    db = node_a.create_pod(namespace, "db-1", {"app": "db"})
    kube.apply(
        namespace,
        {
            "apiVersion": "bpfleet.io/v1alpha1",
            "kind": "EbpfProgram",
            "metadata": {"name": PROGRAM},
            "spec": {
                "source": {"bytecode": {"configMapRef": {"name": "counter-elf", "key": "prog.bpf.o"}}},
                "function": "count_packets",
                "attach": {"type": "CgroupSkb", "direction": "Egress"},
                "podSelector": {"matchLabels": {"app": "web"}},
            },
        },
    )
    wait_for("READY True", lambda: kube.is_ready(namespace, PROGRAM), timeout=30)
    node_status = kube.node_program(namespace, PROGRAM, node_a.name)["status"]
    [attached] = cgroup_programs(web.pod_cgroup)
    assert attached["id"] == node_status["programId"]
    assert cgroup_programs(db.pod_cgroup) == []
    traffic_map = Path(node_status["pinPath"]) / "maps" / "traffic"
    assert web.send_udp("127.0.0.1", 9, count=25, size=100).sent == 25
    counted = traffic_counts(traffic_map)[cgroup_id(web.pod_cgroup)]
    assert counted["packets"] == 25
    assert counted["bytes"] >= 25 * 100
