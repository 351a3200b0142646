"""The pod simulator's kubelet-order mode: a pod started the way kubelet and the runtime start one.

    0. the Pod object (Pending, bound to the node: what kubelet and the agent both watch);
    1. the pod cgroup;
    2. the container cgroup;
       (optionally the container-start hook, as a runtime runs an OCI createRuntime hook);
    3. the container's first process, which sends its first datagram and tries its first connect
       at once.

Step 3 is strict: the process is forked beforehand, outside the pod, waiting on a pipe; it is moved
into the container cgroup and released in the same instant, and makes its sockets only then. So
the first packet leaves microseconds after the process joins, sooner than any real runtime's.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from e2e.podsim import PodSimulator, SimPod
from e2e.sim_objects import STRATEGIC_MERGE_PATCH, pod_status

# Waits for "go", then at once: one UDP datagram, one TCP connect; reports, then lives on as the
# container's process until killed.
_FIRST_PROCESS = """
import errno, json, socket, sys, time
udp_host, udp_port, tcp_host, tcp_port = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
print("ready", flush=True)
sys.stdin.buffer.read(1)
started = time.monotonic()
sent = 0
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
try:
    sent = u.sendto(b"first", (udp_host, udp_port))
except OSError as e:
    sent = -e.errno
t = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
t.settimeout(2)
try:
    t.connect((tcp_host, tcp_port))
    code = 0
except OSError as e:
    code = e.errno or errno.ETIMEDOUT
print(json.dumps({"sent": sent, "connect": code, "took": time.monotonic() - started}), flush=True)
t.close()
u.close()
sys.stdin.buffer.read()
"""


@dataclass(frozen=True)
class FirstMoves:
    """What the container's first process saw: bytes its first datagram sent (a negative errno when
    refused) and the errno of its first connect (0: connected)."""

    sent: int
    connect: int
    took: float


@dataclass(frozen=True)
class Timeline:
    """Monotonic instants of the steps, for the figures."""

    pod_cgroup: float
    container_cgroup: float
    hook_done: float
    started: float


class HookRefused(RuntimeError):
    """The container-start hook exited non-zero: a runtime would fail the container."""


def run_hook(socket_path: Path, pod: SimPod, timeout: float = 5.0, fail_closed: bool = True) -> str:
    """Runs `python -m node_agent.hook` with the OCI state a runtime would pass; its stderr."""
    state = {
        "ociVersion": "1.0.2",
        "id": pod.container_id,
        "status": "creating",
        "pid": 0,
        "bundle": "/nonexistent",
        "annotations": {
            "io.kubernetes.cri.container-type": "container",
            "io.kubernetes.cri.sandbox-uid": pod.uid,
            "io.kubernetes.cri.container-name": "app",
        },
    }
    argv = [sys.executable, "-m", "node_agent.hook", "--socket", str(socket_path), "--timeout", str(timeout)]
    if fail_closed:
        argv.append("--fail-closed")
    done = subprocess.run(argv, input=json.dumps(state), capture_output=True, text=True, timeout=timeout + 30)
    if done.returncode != 0:
        raise HookRefused(f"pod {pod.key}: {done.stderr.strip()}")
    return done.stderr


class KubeletOrder:
    """Starts pods on `sim`'s node in kubelet's order; everything is tracked by `sim` for cleanup."""

    def __init__(self, sim: PodSimulator, hook_socket: Path | None = None) -> None:
        self.sim, self.hook_socket = sim, hook_socket

    def create_pending(
        self, namespace: str, name: str, labels: Mapping[str, str], qos: str = "BestEffort"
    ) -> SimPod:
        """Step 0: the Pod object, Pending, and nothing on the node yet."""
        return self.sim.pending_pod(namespace, name, labels, qos)

    def start(self, pod: SimPod, udp: tuple[str, int], tcp: tuple[str, int]) -> tuple[FirstMoves, Timeline]:
        """Steps 1-3 for a pod made by create_pending."""
        argv = [sys.executable, "-c", _FIRST_PROCESS, udp[0], str(udp[1]), tcp[0], str(tcp[1])]
        process = subprocess.Popen(
            argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        pod._proc, pod.pid = process, process.pid
        assert process.stdin is not None and process.stdout is not None
        if process.stdout.readline().strip() != b"ready":  # started up: it acts the instant it is told
            raise RuntimeError(f"the first process of {pod.key} did not start")
        self.sim._mkdirs(pod.pod_cgroup)
        pod_made = time.monotonic()
        self.sim._mkdirs(pod.container_cgroup)
        container_made = time.monotonic()
        if self.hook_socket is not None:
            run_hook(self.hook_socket, pod)
        hook_done = time.monotonic()
        (pod.container_cgroup / "cgroup.procs").write_text(str(process.pid))
        process.stdin.write(b"g")
        process.stdin.flush()
        started = time.monotonic()
        moves = json.loads(process.stdout.readline())
        self.sim.core.patch_namespaced_pod_status(
            pod.name,
            pod.namespace,
            pod_status(pod.qos, pod.container_id),
            _content_type=STRATEGIC_MERGE_PATCH,
        )
        return FirstMoves(**moves), Timeline(pod_made, container_made, hook_done, started)
