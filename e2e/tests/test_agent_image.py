"""Acceptance: the agent's container image, built from node_agent/Dockerfile, serves a node.

The images are built by e2e/scripts/build-images.sh with podman. The agent image then runs the way
the chart runs it (privileged, host network and pids, the same host mounts and environment) for a
simulated node of its own, next to the operator running from the virtualenv. A run without the
host's kernel headers must say that it has none.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import socket
import subprocess
import sys
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from e2e.controlplane import ControlPlane
from e2e.harness import ManagedProcess, free_address, wait_for
from e2e.kube import Kube, cgroup_programs, scratch_namespace
from e2e.podman import podman, run_options
from e2e.podsim import PodSimulator, cleanup_cgroup_tree, find_cgroup2_mount
from e2e.tools import REPO_ROOT

pytestmark = pytest.mark.e2e

BUILD_SCRIPT = REPO_ROOT / "e2e" / "scripts" / "build-images.sh"
AGENT_IMAGE = "bpfleet/agent:dev"
EXAMPLE = REPO_ROOT / "examples" / "egress-port-deny.yaml"
PROGRAM = "web-no-redis"
# Where the agent finds the kubeconfig inside its container.
KUBECONFIG_IN_CONTAINER = "/etc/bpfleet/kubeconfig"
HEADERS_MISSING = "no kernel headers to compile with"
BYTECODE_STILL_RUNS = "bytecode sources, and builtins from their bytecode, still run"
BUILD_TIMEOUT = 1800


@pytest.fixture(scope="session")
def images() -> None:
    """bpfleet/operator:dev and bpfleet/agent:dev, built (or found up to date) by the script."""
    result = subprocess.run(
        ["bash", str(BUILD_SCRIPT)], capture_output=True, text=True, timeout=BUILD_TIMEOUT, check=False
    )
    sys.stderr.write(result.stderr)
    assert result.returncode == 0, f"{BUILD_SCRIPT.name} failed:\n{result.stderr[-4000:]}"
    for image in ("bpfleet/operator:dev", AGENT_IMAGE):
        assert podman("image", "exists", image, check=False).returncode == 0, f"{image} was not built"


# The host mounts the chart gives the agent (charts/bpfleet/templates/agent-daemonset.yaml).
HOST_MOUNTS = [
    "/sys/fs/bpf:/sys/fs/bpf:rshared",
    "/sys/fs/cgroup:/sys/fs/cgroup",
    "/sys/kernel/tracing:/sys/kernel/tracing",
    "/proc:/host/proc:ro",
]
HEADER_MOUNTS = ["/lib/modules:/lib/modules:ro", "/usr/src:/usr/src:ro"]


def _volumes(mounts: list[str]) -> list[str]:
    return [arg for mount in mounts for arg in ("--volume", mount)]


@dataclass
class AgentContainer:
    """The agent image running as one simulated node's agent."""

    name: str
    node: str
    sim: PodSimulator
    bpffs_root: Path
    metrics_address: str

    def logs(self) -> str:
        result = podman("logs", self.name, check=False)
        return result.stdout + result.stderr

    def running(self) -> bool:
        result = podman("inspect", "--format", "{{.State.Running}}", self.name, check=False)
        return result.stdout.strip() == "true"

    def wait_synced(self, timeout: float = 60) -> None:
        try:
            wait_for("caches synced", lambda: "caches synced" in self.logs(), timeout=timeout, interval=0.5)
        except TimeoutError as e:
            state = "running" if self.running() else "not running"
            raise AssertionError(f"agent container {state}, {e}; its log:\n{self.logs()[-4000:]}") from e


@pytest.fixture
def agent_container(
    control_plane: ControlPlane, kube: Kube, operator: ManagedProcess, images: None, logs_dir: Path
) -> Iterator[AgentContainer]:
    """A simulated node of its own (node-a's agent must not serve it) and the agent image for it."""
    run_id = uuid.uuid4().hex[:6]
    node = f"node-image-{run_id}"
    cgroup_base = find_cgroup2_mount() / f"bpfleet-e2e-image-{run_id}"
    bpffs_base = Path(f"/sys/fs/bpf/bpfleet-e2e-image-{run_id}")
    sim = PodSimulator(kube.api, node, cgroup_base / node)
    # Host network: a metrics port of its own, not the default that other agents here may hold.
    container = AgentContainer(f"bpfleet-agent-e2e-{run_id}", node, sim, bpffs_base / node, free_address())
    kubeconfig = f"{control_plane.kubeconfig}:{KUBECONFIG_IN_CONTAINER}:ro"
    env = {
        "KUBECONFIG": KUBECONFIG_IN_CONTAINER,
        "NODE_NAME": node,
        "BPFLEET_KUBELET_CGROUP_ROOT": str(sim.cgroup_root),
        "BPFLEET_BPFFS_ROOT": str(container.bpffs_root),
        "BPFLEET_PROC_ROOT": "/host/proc",
        "BPFLEET_METRICS_ADDRESS": container.metrics_address,
    }
    try:
        sim.ensure_node(labels={"bpfleet.test/node": node})
        podman(
            "run",
            "--detach",
            "--name",
            container.name,
            *run_options(),
            "--privileged",
            "--network=host",
            "--pid=host",
            *_volumes([*HOST_MOUNTS, *HEADER_MOUNTS, kubeconfig]),
            *(arg for key, value in env.items() for arg in ("--env", f"{key}={value}")),
            AGENT_IMAGE,
        )
        container.wait_synced()
        yield container
    finally:
        podman("stop", "--time", "10", container.name, check=False)
        (logs_dir / f"agent-{node}.log").write_text(container.logs())
        podman("rm", "--force", container.name, check=False)
        sim.cleanup()
        if cgroup_base.exists():
            cleanup_cgroup_tree(cgroup_base)
        shutil.rmtree(bpffs_base, ignore_errors=True)


@pytest.fixture
def own_namespace(kube: Kube, agent_container: AgentContainer) -> Iterator[str]:
    """A namespace for one test; its programs are deleted while the agent container still runs."""

    def remove_pods(namespace: str) -> None:
        for pod in [p for p in agent_container.sim.pods if p.namespace == namespace]:
            agent_container.sim.delete_pod(pod)

    with scratch_namespace(kube, "t", remove_pods) as name:
        yield name


@pytest.fixture
def denied_port() -> Iterator[int]:
    """A listener on loopback at the port the example denies, so that connecting can succeed."""
    port = int(yaml.safe_load(EXAMPLE.read_text())["spec"]["parameters"]["PORT"])
    with socket.socket() as listener:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", port))
        listener.listen(64)
        yield port


@pytest.mark.timeout(BUILD_TIMEOUT)
def test_agent_image_denies_port_then_detaches(
    kube: Kube, agent_container: AgentContainer, own_namespace: str, denied_port: int
):
    ns, node = own_namespace, agent_container.node
    web = agent_container.sim.create_pod(ns, "web-1", {"app": "web"})
    assert web.connect_tcp("127.0.0.1", denied_port) == 0

    kube.apply(ns, EXAMPLE)
    wait_for("READY True", lambda: kube.is_ready(ns, PROGRAM), timeout=60)

    assert web.connect_tcp("127.0.0.1", denied_port) == errno.EPERM
    status = kube.node_program(ns, PROGRAM, node)["status"]
    assert (status["ready"], status["reason"]) == (True, "Attached"), status
    assert status["pods"] == {"selected": 1, "attached": 1, "failed": 0}
    assert [p["id"] for p in cgroup_programs(web.pod_cgroup)] == [status["programId"]]
    # Pinned from inside the container, in the host's bpffs.
    assert (agent_container.bpffs_root / ns / PROGRAM).is_dir()

    kube.kubectl("delete", "-n", ns, "-f", str(EXAMPLE), "--wait=true", "--timeout=30s")

    assert kube.node_programs(ns, PROGRAM) == []
    assert cgroup_programs(web.pod_cgroup) == []
    assert web.connect_tcp("127.0.0.1", denied_port) == 0
    assert not (agent_container.bpffs_root / ns).exists()
    assert agent_container.running(), agent_container.logs()[-4000:]
    # What the chart's liveness probe asks.
    with urllib.request.urlopen(f"http://{agent_container.metrics_address}/healthz", timeout=5) as health:
        assert health.status == 200


# What the agent image says about kernel headers, given the mounts it runs with.
HEADERS_CHECK = "from node_agent.headers import check_kernel_headers; print(check_kernel_headers())"


def _headers_check(mounts: list[str]) -> str:
    result = podman(
        "run",
        "--rm",
        *run_options(),
        *_volumes(mounts),
        "--entrypoint",
        "python",
        AGENT_IMAGE,
        "-c",
        HEADERS_CHECK,
    )
    return result.stdout.strip()


@pytest.mark.timeout(BUILD_TIMEOUT)
@pytest.mark.parametrize(
    ("mounts", "says"),
    [
        pytest.param([], f"kernel {os.uname().release}", id="without-host-mounts"),
        pytest.param(
            ["/lib/modules:/lib/modules:ro"], "is the host's /usr/src mounted?", id="without-usr-src"
        ),
    ],
)
def test_agent_image_says_it_has_no_kernel_headers(images: None, mounts: list[str], says: str):
    message = _headers_check(mounts)
    assert message.startswith(HEADERS_MISSING), message
    assert says in message, message
    # The agent itself says it at start, before anything else can go wrong (here: no API server).
    started = podman(
        "run",
        "--rm",
        *run_options(),
        *_volumes(mounts),
        "--env",
        "NODE_NAME=headerless",
        "--env",
        "KUBECONFIG=/nonexistent",
        AGENT_IMAGE,
        check=False,
    )
    logged = [json.loads(line) for line in started.stderr.splitlines() if line.startswith("{")]
    # A warning, not an error: bytecode sources and builtins (from their bytecode) still run there.
    assert any(
        entry["level"] == "warning"
        and entry["msg"].startswith(HEADERS_MISSING)
        and BYTECODE_STILL_RUNS in entry["msg"]
        for entry in logged
    ), started.stderr


@pytest.mark.timeout(BUILD_TIMEOUT)
def test_agent_image_finds_the_host_kernel_headers(images: None):
    assert _headers_check(HEADER_MOUNTS) == "None"
