"""Acceptance: fan-out over two nodes, nodeSelector, and deleting a program whose node died."""

from __future__ import annotations

import yaml

from e2e.harness import wait_for
from e2e.kube import Kube, cgroup_programs
from e2e.tools import REPO_ROOT

EXAMPLE = REPO_ROOT / "examples" / "pod-traffic-counter.yaml"
PROGRAM = "web-egress-traffic"


def nodes_status(kube: Kube, namespace: str) -> dict:
    return (kube.program(namespace, PROGRAM).get("status") or {}).get("nodes", {})


def test_two_nodes_then_one_then_a_dead_node(kube: Kube, node_a, node_b, namespace: str):
    pod_a = node_a.create_pod(namespace, "web-a", {"app": "web"})
    pod_b = node_b.create_pod(namespace, "web-b", {"app": "web"})

    kube.apply(namespace, EXAMPLE)
    wait_for("ready on both nodes", lambda: kube.is_ready(namespace, PROGRAM), timeout=10)
    assert nodes_status(kube, namespace) == {"targeted": 2, "ready": 2, "failed": 0}
    assert kube.program(namespace, PROGRAM)["status"]["summary"] == {"nodes": "2/2", "pods": "2/2"}
    assert cgroup_programs(pod_a.pod_cgroup) and cgroup_programs(pod_b.pod_cgroup)

    # A nodeSelector that matches node-b only: node-a's copy is detached and removed.
    program = kube.program(namespace, PROGRAM)
    program["spec"]["nodeSelector"] = {"matchLabels": {"bpfleet.test/node": node_b.name}}
    kube.apply(
        namespace, {k: program[k] for k in ("apiVersion", "kind", "spec")} | {"metadata": {"name": PROGRAM}}
    )
    wait_for(
        "one node targeted",
        lambda: kube.is_ready(namespace, PROGRAM) and nodes_status(kube, namespace)["targeted"] == 1,
        timeout=10,
    )
    assert nodes_status(kube, namespace) == {"targeted": 1, "ready": 1, "failed": 0}
    wait_for("node-a detached", lambda: not cgroup_programs(pod_a.pod_cgroup), timeout=10)
    wait_for(
        "node-a's status entry gone",
        lambda: [np["node"] for np in kube.node_programs(namespace, PROGRAM)] == [node_b.name],
        timeout=10,
    )

    # Back to both nodes; then node-b's agent dies and its Node object is deleted.
    program["spec"].pop("nodeSelector")
    kube.apply(
        namespace, {k: program[k] for k in ("apiVersion", "kind", "spec")} | {"metadata": {"name": PROGRAM}}
    )
    wait_for("both nodes again", lambda: nodes_status(kube, namespace).get("ready") == 2, timeout=10)
    node_b.agent.stop()
    try:
        kube.kubectl("delete", "node", node_b.name)
        kube.kubectl("delete", "ebpfprogram", "-n", namespace, PROGRAM, "--wait=true", "--timeout=20s")
        assert kube.program(namespace, PROGRAM) is None
        # node-a's entry is gone; the dead node's EbpfNodeState goes with its Node (garbage
        # collection), holding nothing up meanwhile.
        wait_for("node-b's state collected", lambda: kube.node_programs(namespace, PROGRAM) == [], timeout=15)
        assert node_b.name not in {s["metadata"]["name"] for s in kube.node_states()}
        assert not cgroup_programs(pod_a.pod_cgroup)
    finally:
        node_b.sim.ensure_node(labels={"bpfleet.test/node": node_b.name})
        node_b.agent.start()


def test_relabelling_a_node_changes_the_fan_out(kube: Kube, node_a, node_b, namespace: str):
    pod_b = node_b.create_pod(namespace, "web-b", {"app": "web"})
    assert "kubepods/besteffort/pod" in str(pod_b.pod_cgroup)  # the cgroupfs layout
    program = {
        "apiVersion": "bpfleet.io/v1alpha1",
        "kind": "EbpfProgram",
        "metadata": {"name": PROGRAM},
        "spec": {
            **yaml.safe_load(EXAMPLE.read_text())["spec"],
            "nodeSelector": {"matchLabels": {"bpfleet.test/tier": "edge"}},
        },
    }
    kube.apply(namespace, program)
    wait_for("ready on no node", lambda: kube.is_ready(namespace, PROGRAM), timeout=10)
    assert nodes_status(kube, namespace)["targeted"] == 0

    kube.kubectl("label", "node", node_b.name, "bpfleet.test/tier=edge")
    wait_for("node-b targeted and attached", lambda: cgroup_programs(pod_b.pod_cgroup), timeout=10)
    wait_for("status 1/1", lambda: nodes_status(kube, namespace).get("ready") == 1, timeout=10)

    kube.kubectl("label", "node", node_b.name, "bpfleet.test/tier-")
    wait_for("node-b detached", lambda: not cgroup_programs(pod_b.pod_cgroup), timeout=10)
    # The status write comes after the detach, in the same pass.
    wait_for("node-b's entry gone", lambda: kube.node_programs(namespace, PROGRAM) == [], timeout=5)
