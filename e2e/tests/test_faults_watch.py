"""A whole agent whose connections to the API server freeze (a proxy forwards nothing more, and keeps
them open): it notices its stalled watches within their bound, and a pod created meanwhile is
attached (bpftool) and reported in the program's status."""

from __future__ import annotations

import shutil
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pytest
import yaml

from e2e.controlplane import ControlPlane
from e2e.freeze_proxy import FreezingProxy
from e2e.harness import ManagedProcess, agent_process, free_address, wait_for
from e2e.kube import Kube, cgroup_programs, scratch_namespace
from e2e.podsim import PodSimulator, cleanup_cgroup_tree, find_cgroup2_mount
from e2e.tools import REPO_ROOT

pytestmark = pytest.mark.e2e

NODE = "node-stall"
PROGRAM = "web-egress-traffic"
WATCH_SECONDS = 3
STALL_BOUND = WATCH_SECONDS + 5  # bpfleet_api.informer.WatchTiming.grace
REQUEST_SECONDS = 3  # a status write sent on a frozen connection is sent again after this


@pytest.fixture
def stalling_node(
    control_plane: ControlPlane, kube: Kube, operator: ManagedProcess, logs_dir: Path, tmp_path: Path
) -> Iterator[tuple[FreezingProxy, PodSimulator, ManagedProcess]]:
    run = uuid.uuid4().hex[:6]
    cgroup_root = find_cgroup2_mount() / f"bpfleet-e2e-stall-{run}"
    bpffs_root = Path(f"/sys/fs/bpf/bpfleet-e2e-stall-{run}")
    server = urlparse(control_plane.server_url)
    sim = PodSimulator(kube.api, NODE, cgroup_root)
    sim.ensure_node(labels={"bpfleet.test/node": NODE})
    with FreezingProxy((server.hostname or "127.0.0.1", server.port or 443)) as proxy:
        config = proxy.kubeconfig(control_plane.kubeconfig, tmp_path / "kubeconfig")
        agent = agent_process(config, NODE, cgroup_root, bpffs_root, logs_dir, metrics_address=free_address())
        agent.env.update(
            {
                "BPFLEET_HEARTBEAT_SECONDS": "1",
                "BPFLEET_WATCH_SECONDS": str(WATCH_SECONDS),
                "BPFLEET_API_TIMEOUT_SECONDS": str(REQUEST_SECONDS),
            }
        )
        kube.forget_agent(NODE)
        agent.start()
        try:
            wait_for("the agent publishing its BpfleetNode", lambda: kube.runs_agent(NODE), timeout=30)
            yield proxy, sim, agent
        finally:
            agent.stop()
            sim.cleanup()
            cleanup_cgroup_tree(cgroup_root)
            shutil.rmtree(bpffs_root, ignore_errors=True)
            kube.forget_agent(NODE)


@pytest.fixture
def stall_namespace(kube: Kube, stalling_node: Any) -> Iterator[str]:
    _, sim, _ = stalling_node

    def remove_pods(namespace: str) -> None:
        for pod in [p for p in sim.pods if p.namespace == namespace]:
            sim.delete_pod(pod)

    with scratch_namespace(kube, "stall", remove_pods) as name:
        yield name


def _pods(kube: Kube, namespace: str) -> str:
    status = (kube.program(namespace, PROGRAM) or {}).get("status") or {}
    return str((status.get("summary") or {}).get("pods"))


def test_an_agent_whose_watches_stall_attaches_a_pod_created_meanwhile(
    kube: Kube, stalling_node: Any, stall_namespace: str
):
    proxy, sim, agent = stalling_node
    program = yaml.safe_load((REPO_ROOT / "examples" / "pod-traffic-counter.yaml").read_text())
    program["metadata"] = {"name": PROGRAM}
    program["spec"]["nodeSelector"] = {"matchLabels": {"bpfleet.test/node": NODE}}
    sim.create_pod(stall_namespace, "web-0", {"app": "web"})
    kube.apply(stall_namespace, program)
    wait_for("READY True", lambda: kube.is_ready(stall_namespace, PROGRAM), timeout=30)
    time.sleep(1)  # the agent's own status write echoed back: its watches are idle

    assert proxy.freeze() >= 2  # both watches at least
    frozen = time.monotonic()
    pod = sim.create_pod(stall_namespace, "web-1", {"app": "web"})
    time.sleep(1)
    assert not cgroup_programs(pod.pod_cgroup), "the freeze did not stall the agent's pod watch"

    wait_for(
        "the pod created during the stall attached",
        lambda: cgroup_programs(pod.pod_cgroup),
        timeout=STALL_BOUND + 5,
        interval=0.05,
    )
    attached = time.monotonic() - frozen
    assert attached <= STALL_BOUND + 2, attached
    wait_for(
        "the status counting it",
        lambda: _pods(kube, stall_namespace) == "2/2" and kube.is_ready(stall_namespace, PROGRAM),
        timeout=2 * REQUEST_SECONDS + 10,
    )
    print(f"agent: stall noticed and pod attached {attached:.1f}s, reported {time.monotonic() - frozen:.1f}s")
    assert '"watch stalled, watching again"' in agent.log_path.read_text()
