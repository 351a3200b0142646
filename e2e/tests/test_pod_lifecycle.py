"""Acceptance: pods arriving, being relabelled and leaving are followed within seconds."""

from __future__ import annotations

from e2e.harness import wait_for
from e2e.kube import Kube, cgroup_programs
from e2e.tools import REPO_ROOT

EXAMPLE = REPO_ROOT / "examples" / "pod-traffic-counter.yaml"
PROGRAM = "web-egress-traffic"
FOLLOW_SECONDS = 5


def pods_attached(kube: Kube, namespace: str) -> str:
    status = kube.program(namespace, PROGRAM).get("status") or {}
    return (status.get("summary") or {}).get("pods", "")


def test_new_relabelled_and_deleted_pods_are_followed(kube: Kube, node_a, namespace: str):
    node_a.create_pod(namespace, "web-1", {"app": "web"})
    kube.apply(namespace, EXAMPLE)
    wait_for("READY True", lambda: kube.is_ready(namespace, PROGRAM), timeout=10)

    # A new matching pod is attached.
    web_2 = node_a.create_pod(namespace, "web-2", {"app": "web"})
    wait_for("new pod attached", lambda: cgroup_programs(web_2.pod_cgroup), timeout=FOLLOW_SECONDS)
    wait_for("status 2/2", lambda: pods_attached(kube, namespace) == "2/2", timeout=FOLLOW_SECONDS)

    # Relabelled out of the selector: detached. Back in: attached again.
    node_a.sim.set_labels(web_2, {"app": "other"})
    wait_for("relabelled pod detached", lambda: not cgroup_programs(web_2.pod_cgroup), timeout=FOLLOW_SECONDS)
    wait_for("status 1/1", lambda: pods_attached(kube, namespace) == "1/1", timeout=FOLLOW_SECONDS)
    node_a.sim.set_labels(web_2, {"app": "web"})
    wait_for("relabelled pod attached", lambda: cgroup_programs(web_2.pod_cgroup), timeout=FOLLOW_SECONDS)

    # A pod that does not match to begin with, relabelled into the selector.
    db = node_a.create_pod(namespace, "db-1", {"app": "db"})
    node_a.sim.set_labels(db, {"app": "web"})
    wait_for("relabelled-in pod attached", lambda: cgroup_programs(db.pod_cgroup), timeout=FOLLOW_SECONDS)

    # Deleted: no attachment and no state left behind.
    links_dir = next(node_a.bpffs_root.glob(f"{namespace}/{PROGRAM}/*/links"))
    assert (links_dir / web_2.uid).exists()
    node_a.delete_pod(web_2)
    wait_for(
        "deleted pod's link unpinned", lambda: not (links_dir / web_2.uid).exists(), timeout=FOLLOW_SECONDS
    )
    wait_for("status 2/2", lambda: pods_attached(kube, namespace) == "2/2", timeout=FOLLOW_SECONDS)
    assert kube.node_program(namespace, PROGRAM, node_a.name)["status"]["pods"]["selected"] == 2


def test_twenty_pods_share_one_compiled_program(kube: Kube, node_a, namespace: str):
    pods = [node_a.create_pod(namespace, f"web-{i}", {"app": "web"}) for i in range(20)]
    kube.apply(namespace, EXAMPLE)
    wait_for("20/20", lambda: pods_attached(kube, namespace) == "20/20", timeout=30)
    program_id = kube.node_program(namespace, PROGRAM, node_a.name)["status"]["programId"]
    assert {p["id"] for pod in pods for p in cgroup_programs(pod.pod_cgroup)} == {program_id}
    compiles = [
        line
        for line in node_a.agent.log_path.read_text().splitlines()
        if '"compiling program"' in line and f'"{namespace}/{PROGRAM}"' in line
    ]
    assert len(compiles) == 1
