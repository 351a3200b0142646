"""A whole local fleet for the scripts that run outside pytest (soak, fault figures): a control plane
of its own, the CRDs, the operator and one agent per simulated node, all removed again on exit."""

from __future__ import annotations

import contextlib
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from e2e.controlplane import ControlPlane
from e2e.harness import ManagedProcess, agent_process, install_crds, operator_process, wait_for
from e2e.kube import Kube
from e2e.podsim import PodSimulator, SimPod, cleanup_cgroup_tree, find_cgroup2_mount


@dataclass
class FleetNode:
    """A simulated node and its agent (what the e2e suites' Node fixture is, outside pytest)."""

    name: str
    sim: PodSimulator
    agent: ManagedProcess
    bpffs_root: Path
    pods: list[SimPod] = field(default_factory=list)

    def create_pod(self, namespace: str, name: str, labels: dict[str, str]) -> SimPod:
        pod = self.sim.create_pod(namespace, name, labels)
        self.pods.append(pod)
        return pod

    def delete_pod(self, pod: SimPod) -> None:
        self.sim.delete_pod(pod)
        self.pods.remove(pod)


@dataclass
class Fleet:
    plane: ControlPlane
    kube: Kube
    operator: ManagedProcess
    nodes: list[FleetNode]
    work: Path


@contextlib.contextmanager
def local_fleet(nodes: int = 2, env: dict[str, Any] | None = None) -> Iterator[Fleet]:
    run = uuid.uuid4().hex[:6]
    work = Path(tempfile.mkdtemp(prefix=f"bpfleet-fleet-{run}-"))
    cgroup_base = find_cgroup2_mount() / f"bpfleet-fleet-{run}"
    bpffs_base = Path(f"/sys/fs/bpf/bpfleet-fleet-{run}")
    plane = ControlPlane(state_dir=work / "controlplane")
    started: list[FleetNode] = []
    operator: ManagedProcess | None = None
    plane.start()
    try:
        kube = Kube(plane.kubeconfig)
        install_crds(plane.kubeconfig)
        operator = operator_process(plane.kubeconfig, work / "logs")
        operator.env.update({k: str(v) for k, v in (env or {}).items()})
        operator.start()
        for i in range(nodes):
            name = f"node-{chr(ord('a') + i)}"
            cgroups, bpffs = cgroup_base / name, bpffs_base / name
            sim = PodSimulator(kube.api, name, cgroups, driver="systemd" if i % 2 == 0 else "cgroupfs")
            sim.ensure_node(labels={"bpfleet.test/node": name})
            agent = agent_process(plane.kubeconfig, name, cgroups, bpffs, work / "logs")
            agent.env.update({k: str(v) for k, v in (env or {}).items()})
            started.append(FleetNode(name, sim, agent, bpffs))
            agent.start()
            wait_for(f"the agent on {name}", lambda name=name: kube.runs_agent(name), timeout=60)
        yield Fleet(plane, kube, operator, started, work)
    finally:
        if started:  # programs first, while the agents run to detach them
            with contextlib.suppress(Exception):
                kube.kubectl("delete", "ebpf", "--all", "-A", "--wait=true", "--timeout=60s", check=False)
        for node in started:
            node.agent.stop()
            node.sim.cleanup()
        if operator is not None:
            operator.stop()
        plane.stop()
        if cgroup_base.exists():
            cleanup_cgroup_tree(cgroup_base)
        shutil.rmtree(bpffs_base, ignore_errors=True)
        shutil.rmtree(work, ignore_errors=True)
