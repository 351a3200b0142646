"""Acceptance: examples/pod-traffic-counter.yaml counts the selected pods' traffic, and only theirs."""

from __future__ import annotations

from pathlib import Path

from e2e.harness import wait_for
from e2e.kube import Kube, cgroup_id, cgroup_programs, traffic_counts
from e2e.tools import REPO_ROOT

EXAMPLE = REPO_ROOT / "examples" / "pod-traffic-counter.yaml"
PROGRAM = "web-egress-traffic"


def test_counts_traffic_of_selected_pods_only(kube: Kube, node_a, namespace: str):
    web_1 = node_a.create_pod(namespace, "web-1", {"app": "web"})
    web_2 = node_a.create_pod(namespace, "web-2", {"app": "web"})
    db = node_a.create_pod(namespace, "db-1", {"app": "db"})

    kube.apply(namespace, EXAMPLE)
    wait_for("READY True", lambda: kube.is_ready(namespace, PROGRAM), timeout=10)

    status = kube.program(namespace, PROGRAM)["status"]
    assert status["pods"] == {"selected": 2, "attached": 2, "failed": 0}
    assert status["nodes"] == {"targeted": 1, "ready": 1, "failed": 0}
    printed = kube.kubectl("get", "ebpf", "-n", namespace, PROGRAM)
    assert "True" in printed and "2/2" in printed and "1/1" in printed

    node_status = kube.node_program(namespace, PROGRAM, node_a.name)["status"]
    program_id = node_status["programId"]
    for pod in (web_1, web_2):
        [attached] = cgroup_programs(pod.pod_cgroup)
        assert attached["id"] == program_id
        assert attached["attach_type"] == "cgroup_inet_egress"
        assert attached["attach_flags"] == "multi"
    assert cgroup_programs(db.pod_cgroup) == []

    traffic_map = Path(node_status["pinPath"]) / "maps" / "traffic"
    assert str(traffic_map).startswith(str(node_a.bpffs_root))
    before = traffic_counts(traffic_map).get(cgroup_id(web_1.pod_cgroup), {"packets": 0, "bytes": 0})
    assert web_1.send_udp("127.0.0.1", 9, count=25, size=100).sent == 25
    assert db.send_udp("127.0.0.1", 9, count=25, size=100).sent == 25

    after = traffic_counts(traffic_map)
    counted = after[cgroup_id(web_1.pod_cgroup)]
    assert counted["packets"] - before["packets"] == 25
    assert counted["bytes"] - before["bytes"] >= 25 * 100
    assert cgroup_id(db.pod_cgroup) not in after
