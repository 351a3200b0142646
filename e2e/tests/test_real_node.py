"""The cluster suite (e2e/cluster_tests) on a real node of this host (e2e/realnode): kubelet,
containerd, runc and the CNI bridge run real pods, and the chart, installed with Helm with this
tree's images, runs the operator and the agent as pods. This is how `make test` (CI) runs it; `make
cluster-test` runs the same suite against a node left up by `make cluster-up`.

A node already up is reused and left up; one brought up here is brought down again, and then
nothing of it may be left on the host.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from e2e.realnode import kubelet, network
from e2e.realnode.containerd import SHIM
from e2e.realnode.daemons import pids_with_argument
from e2e.realnode.layout import AGENT_BPFFS_ROOT, BRIDGE, Layout
from e2e.tools import REPO_ROOT

# Cold: the images built and imported, kubelet and kube-scheduler built (docs/development.md).
pytestmark = pytest.mark.timeout(3600)


def realnode(*args: str, timeout: float = 1800) -> str:
    result = subprocess.run(
        [sys.executable, "-m", "e2e.realnode", *args],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    sys.stderr.write(result.stderr)
    assert result.returncode == 0, f"python -m e2e.realnode {' '.join(args)}:\n{result.stderr[-4000:]}"
    return result.stdout.strip()


def leftovers(layout: Layout) -> list[str]:
    """What of the real node is still on the host."""
    found = [str(path) for path in (layout.run, layout.lib, AGENT_BPFFS_ROOT) if path.exists()]
    found += [str(path) for path in kubelet.cgroup_root_dirs() if path.exists()]
    found += [f"veth {port}" for port in network.bridge_ports()]
    if subprocess.run(["ip", "link", "show", "dev", BRIDGE], capture_output=True).returncode == 0:
        found.append(f"bridge {BRIDGE}")
    for binary, marker in (("kubelet", layout.kubelet_root), ("containerd", layout.containerd_config)):
        found += [f"{binary} pid {pid}" for pid in pids_with_argument(binary, str(marker))]
    found += [f"{SHIM} pid {pid}" for pid in pids_with_argument(SHIM, str(layout.containerd_socket))]
    return found


def test_the_cluster_suite_passes_on_a_real_node() -> None:
    layout = Layout.default()
    was_up = (
        subprocess.run(
            [sys.executable, "-m", "e2e.realnode", "status"], cwd=REPO_ROOT, capture_output=True, check=False
        ).returncode
        == 0
    )
    timings: dict[str, float] = {}
    try:
        start = time.monotonic()
        realnode("up")
        timings["up"] = time.monotonic() - start
        start = time.monotonic()
        realnode("install", timeout=600)
        timings["install"] = time.monotonic() - start
        env = {
            **os.environ,
            "BPFLEET_CLUSTER_KUBECONFIG": realnode("kubeconfig"),
            "BPFLEET_CLUSTER_APP_IMAGE": realnode("app-image"),
            "BPFLEET_CLUSTER_UPGRADE_AGENT_TAG": realnode("upgrade-tag"),
        }
        start = time.monotonic()
        suite = subprocess.run(
            [
                sys.executable,
                "-m",
                "pytest",
                "e2e/cluster_tests",
                "-q",
                "-p",
                "no:cacheprovider",
                "--durations=0",
            ],
            cwd=REPO_ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=2400,
            check=False,
        )
        timings["suite"] = time.monotonic() - start
        sys.stderr.write(suite.stdout[-4000:])
        assert suite.returncode == 0, f"e2e/cluster_tests on the real node:\n{suite.stdout[-8000:]}"
    finally:
        if not was_up:
            start = time.monotonic()
            realnode("down", timeout=300)
            timings["down"] = time.monotonic() - start
        sys.stderr.write(f"real node timings: {', '.join(f'{k} {v:.0f}s' for k, v in timings.items())}\n")
    if not was_up:
        assert leftovers(layout) == []
