"""The main job on one host: control plane, CRDs, operator, agent, pods, a program, its status.

    python -m e2e.demo up     start (or restart) everything and show a counter program working
    python -m e2e.demo down   delete the program, stop bpfleet and the control plane, remove the pods

Safe to rerun: `up` reuses a healthy control plane and replaces the operator, agent and pods.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
from pathlib import Path

from kubernetes.client.exceptions import ApiException

from e2e.controlplane import ControlPlane
from e2e.harness import ManagedProcess, agent_process, install_crds, log, operator_process, wait_for
from e2e.kube import Kube, cgroup_id, traffic_counts
from e2e.podsim import PodSimulator, cleanup_cgroup_tree, find_cgroup2_mount
from e2e.tools import REPO_ROOT, cache_dir

NAMESPACE = "bpfleet-demo"
NODE = "demo-node"
PROGRAM = "web-egress-traffic"
EXAMPLE = REPO_ROOT / "examples" / "pod-traffic-counter.yaml"
BPFFS_ROOT = Path("/sys/fs/bpf/bpfleet")
PODS = {"web-1": {"app": "web"}, "web-2": {"app": "web"}, "db-1": {"app": "db"}}


def state_dir() -> Path:
    return cache_dir() / "run" / "demo"


def cgroup_root() -> Path:
    return find_cgroup2_mount() / "bpfleet-demo" / NODE


def _pid_file(name: str) -> Path:
    return state_dir() / "bpfleet" / f"{name}.pid"


def _stop_recorded(name: str) -> None:
    """Stops a component a previous `up` left running, if it is still the one we started."""
    pid_file = _pid_file(name)
    try:
        pid = int(pid_file.read_text())
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (OSError, ValueError):
        pid_file.unlink(missing_ok=True)
        return
    if b"bpfleet_operator.main" in cmdline or b"node_agent.main" in cmdline:
        log(f"stopping previous {name}", pid=pid)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGTERM)
    pid_file.unlink(missing_ok=True)


def _start_recorded(name: str, process: ManagedProcess) -> None:
    _stop_recorded(name)
    process.start()
    assert process.process is not None
    _pid_file(name).parent.mkdir(parents=True, exist_ok=True)
    _pid_file(name).write_text(str(process.process.pid))


def _remove_previous_pods(kube: Kube) -> None:
    with contextlib.suppress(ApiException):
        for pod in kube.core.list_namespaced_pod(NAMESPACE).items:
            kube.core.delete_namespaced_pod(pod.metadata.name, NAMESPACE, grace_period_seconds=0)
    if cgroup_root().parent.exists():
        cleanup_cgroup_tree(cgroup_root().parent)


def _attached_uids(kube: Kube) -> set[str]:
    """The pods whose link the agent pinned (the status counts pods; the pins name them)."""
    return {link.name for link in BPFFS_ROOT.glob(f"{NAMESPACE}/{PROGRAM}/*/links/*")}


def up() -> None:
    plane = ControlPlane(state_dir=state_dir())
    plane.start()
    kube = Kube(plane.kubeconfig)
    kube.bpffs_roots[NODE] = BPFFS_ROOT
    install_crds(plane.kubeconfig)
    logs = state_dir() / "logs"
    _start_recorded("operator", operator_process(plane.kubeconfig, logs))
    _start_recorded("agent", agent_process(plane.kubeconfig, NODE, cgroup_root(), BPFFS_ROOT, logs))
    # Only a node whose agent has published its BpfleetNode is targeted.
    wait_for("the agent to start", lambda: kube.runs_agent(NODE), timeout=60)

    _remove_previous_pods(kube)
    sim = PodSimulator(kube.api, NODE, cgroup_root())
    sim.ensure_node(labels={"bpfleet.io/demo": "true"})
    log("creating simulated pods", namespace=NAMESPACE, pods=",".join(PODS))
    pods = {name: sim.create_pod(NAMESPACE, name, labels) for name, labels in PODS.items()}

    log("applying example", manifest=EXAMPLE.relative_to(REPO_ROOT))
    print(kube.apply(NAMESPACE, EXAMPLE), end="")
    selected = {pod.uid for name, pod in pods.items() if PODS[name] == {"app": "web"}}
    seconds = wait_for(
        "the program to be Ready on the new pods",
        lambda: kube.is_ready(NAMESPACE, PROGRAM) and _attached_uids(kube) == selected,
        timeout=60,
    )
    log("program ready", seconds=f"{seconds:.1f}")

    sent = {"web-1": 100, "web-2": 40, "db-1": 70}
    for name, count in sent.items():
        pods[name].send_udp("127.0.0.1", 9, count=count, size=200)
    log("sent UDP datagrams from each pod", **sent)

    print()
    print(f"$ kubectl get ebpf -n {NAMESPACE} -o wide")
    print(kube.kubectl("get", "ebpf", "-n", NAMESPACE, "-o", "wide"))
    print("$ kubectl get ebpfnodestate   (what each node should run and runs)")
    print(kube.kubectl("get", "ebpfnodestate"))
    print("$ kubectl get bpfnode   (what each node's kernel can run)")
    print(kube.kubectl("get", "bpfnode"))
    pin = Path(kube.node_program(NAMESPACE, PROGRAM, NODE)["status"]["pinPath"]) / "maps" / "traffic"
    counts = traffic_counts(pin)
    print(f"$ bpftool map dump pinned {pin}   (per pod, egress)")
    for name, pod in pods.items():
        entry = counts.get(cgroup_id(pod.pod_cgroup))
        shown = (
            f"{entry['packets']} packets, {entry['bytes']} bytes" if entry else "not counted (not selected)"
        )
        print(f"  {name:6} {shown}")
    print()
    print("bpfleet is running on this host. Try:")
    print(f"  export KUBECONFIG={plane.kubeconfig}")
    print(f"  {REPO_ROOT}/.venv/bin/python -m e2e.podsim --help   # more pods")
    print(f"  kubectl get ebpf -A;  kubectl describe ebpf -n {NAMESPACE} {PROGRAM}")
    print(f"Logs: {logs}.  Stop everything: {sys.executable} -m e2e.demo down")


def down() -> None:
    plane = ControlPlane(state_dir=state_dir())
    if plane.healthy():
        kube = Kube(plane.kubeconfig)
        # Delete the program while the agent still runs, so that it detaches and unpins.
        kube.kubectl("delete", "ebpf", "--all", "-n", NAMESPACE, "--wait=true", "--timeout=30s", check=False)
        _remove_previous_pods(kube)
    for name in ("agent", "operator"):
        _stop_recorded(name)
    if cgroup_root().parent.exists():
        cleanup_cgroup_tree(cgroup_root().parent)
    plane.stop()
    log("demo stopped")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m e2e.demo", description=__doc__)
    parser.add_argument("command", choices=("up", "down"), nargs="?", default="up")
    args = parser.parse_args(argv)
    up() if args.command == "up" else down()


if __name__ == "__main__":
    main()
