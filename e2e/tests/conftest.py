"""The full path, for real: a control plane, the CRDs, the operator, an agent per simulated node,
pods whose cgroups and processes exist on this host's kernel."""

from __future__ import annotations

import shutil
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from bpfleet_api import names
from e2e.controlplane import ControlPlane, running_control_plane
from e2e.harness import (
    ManagedProcess,
    agent_process,
    free_address,
    install_crds,
    operator_process,
    wait_for,
)
from e2e.kube import Kube, scratch_namespace
from e2e.podsim import CgroupDriver, PodSimulator, SimPod, cleanup_cgroup_tree, find_cgroup2_mount

RUN_ID = uuid.uuid4().hex[:6]
BPFFS_BASE = Path(f"/sys/fs/bpf/bpfleet-e2e-{RUN_ID}")
AGENT_SILENCE = 4  # seconds without a heartbeat before the operator reports a node uncovered

E2E_DIR = Path(__file__).resolve().parent


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Marks every test of this directory e2e: a pytestmark in a conftest applies to no test."""
    for item in items:
        if E2E_DIR in Path(item.path).resolve().parents:
            item.add_marker(pytest.mark.e2e)


@dataclass
class Node:
    """A simulated node: its pods (through the simulator) and its agent process."""

    name: str
    sim: PodSimulator
    agent: ManagedProcess
    bpffs_root: Path
    pods: list[SimPod] = field(default_factory=list)

    def create_pod(
        self,
        namespace: str,
        name: str,
        labels: dict[str, str],
        qos: str = "BestEffort",
        network: bool = False,
        root: Path | None = None,
    ) -> SimPod:
        pod = self.sim.create_pod(namespace, name, labels, qos=qos, network=network, root=root)
        self.pods.append(pod)
        return pod

    def delete_pod(self, pod: SimPod) -> None:
        self.sim.delete_pod(pod)
        self.pods.remove(pod)


@pytest.fixture(scope="session")
def control_plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlane]:
    """The end-to-end tier's own control plane: its operator must be the only one watching, whatever
    other tiers run in the same session."""
    with running_control_plane(tmp_path_factory.mktemp("controlplane")) as plane:
        yield plane


@pytest.fixture(scope="session")
def kube(control_plane: ControlPlane) -> Kube:
    return Kube(control_plane.kubeconfig)


@pytest.fixture(scope="session")
def system_namespace(kube: Kube) -> str:
    """Where the operator puts ClusterEbpfPrograms' versions, as the chart's release namespace."""
    name = names.system_namespace()
    kube.kubectl("create", "namespace", name, check=False)
    return name


@pytest.fixture(scope="session")
def logs_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("logs")


@pytest.fixture(scope="session")
def operator(control_plane: ControlPlane, logs_dir: Path) -> Iterator[ManagedProcess]:
    install_crds(control_plane.kubeconfig)
    process = operator_process(control_plane.kubeconfig, logs_dir, metrics_address=free_address())
    # Seconds rather than the production minute and a half, so that a silent agent shows quickly.
    process.env.update({"BPFLEET_AGENT_SILENCE_SECONDS": str(AGENT_SILENCE), "BPFLEET_RESYNC_SECONDS": "1"})
    process.start()
    try:
        yield process
    finally:
        process.stop()


def _start_node(
    name: str, control_plane: ControlPlane, kube: Kube, logs_dir: Path, driver: CgroupDriver = "systemd"
) -> Node:
    cgroup_root = find_cgroup2_mount() / f"bpfleet-e2e-{RUN_ID}" / name
    sim = PodSimulator(kube.api, name, cgroup_root, driver=driver)
    sim.ensure_node(labels={"bpfleet.test/node": name})
    bpffs_root = BPFFS_BASE / name
    agent = agent_process(
        control_plane.kubeconfig, name, cgroup_root, bpffs_root, logs_dir, metrics_address=free_address()
    )
    agent.env["BPFLEET_HEARTBEAT_SECONDS"] = "1"
    kube.forget_agent(name)  # one left by an earlier agent of that name would not prove this one runs
    agent.start()
    wait_for(f"the agent on {name} to publish its BpfleetNode", lambda: kube.runs_agent(name), timeout=30)
    kube.bpffs_roots[name] = bpffs_root
    return Node(name, sim, agent, bpffs_root)


def _stop_node(node: Node) -> None:
    node.agent.stop()
    node.sim.cleanup()
    cleanup_cgroup_tree(node.sim.cgroup_root)
    shutil.rmtree(node.bpffs_root, ignore_errors=True)


@pytest.fixture(scope="session")
def node_a(
    control_plane: ControlPlane, kube: Kube, operator: ManagedProcess, logs_dir: Path
) -> Iterator[Node]:
    node = _start_node("node-a", control_plane, kube, logs_dir)
    try:
        yield node
    finally:
        _stop_node(node)


@pytest.fixture
def node_b(
    control_plane: ControlPlane, kube: Kube, operator: ManagedProcess, logs_dir: Path
) -> Iterator[Node]:
    """A second node, for the tests that need two; gone again afterwards so that others see one.
    Its kubelet uses the cgroupfs driver, node-a's the systemd one: both layouts are exercised."""
    node = _start_node("node-b", control_plane, kube, logs_dir, driver="cgroupfs")
    try:
        yield node
    finally:
        _stop_node(node)


@pytest.fixture(scope="session", autouse=True)
def _bpffs_base() -> Iterator[None]:
    try:
        yield
    finally:
        shutil.rmtree(BPFFS_BASE, ignore_errors=True)
        cgroup_base = find_cgroup2_mount() / f"bpfleet-e2e-{RUN_ID}"
        if cgroup_base.exists():
            cleanup_cgroup_tree(cgroup_base)


@pytest.fixture
def namespace(kube: Kube, node_a: Node, request: pytest.FixtureRequest) -> Iterator[str]:
    """A namespace of its own per test; its programs and pods are removed afterwards."""

    def remove_pods(namespace: str) -> None:
        for node in _nodes_started(request):
            for pod in [p for p in node.pods if p.namespace == namespace]:
                node.delete_pod(pod)

    with scratch_namespace(kube, "t", remove_pods) as name:
        yield name


def _nodes_started(request: pytest.FixtureRequest) -> list[Node]:
    return [request.getfixturevalue(f) for f in ("node_a", "node_b") if f in request.fixturenames]
