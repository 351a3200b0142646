"""A simulated pod (e2e/podsim.py makes them): its identity, cgroups and process, and what it can
do from inside its cgroup (connect, send datagrams, run a command)."""

from __future__ import annotations

import json
import os
import select
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from e2e.podnet import PodNetwork
from e2e.sim_cgroups import QosClass, run_in_cgroup, spawn_in_cgroup

# --- scripts run inside a pod's cgroup -------------------------------------------------------------------

# Prints 0 or the errno of the failed connect(); a timeout is reported as ETIMEDOUT.
_CONNECT_TCP_SCRIPT = """
import errno, socket, sys
host, port, timeout = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
try:
    with socket.create_connection((host, port), timeout=timeout):
        code = 0
except TimeoutError as exc:
    code = exc.errno or errno.ETIMEDOUT
except OSError as exc:
    code = exc.errno or -1
print(code)
"""

# Prints {"sent": n, "errors": {errno: count}}: a drop by a cgroup egress program shows up as EPERM.
_SEND_UDP_SCRIPT = """
import json, socket, sys
host, port, count, size = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
family, _, _, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM)[0]
payload = b"x" * size
sent, errors = 0, {}
with socket.socket(family, socket.SOCK_DGRAM) as sock:
    for _ in range(count):
        try:
            sock.sendto(payload, address)
            sent += 1
        except OSError as exc:
            errors[exc.errno] = errors.get(exc.errno, 0) + 1
print(json.dumps({"sent": sent, "errors": errors}))
"""


PROBE_TARGET = "/bin/target"  # in a root made by build_probe_root
PROBE_SYMBOL = "bpfleet_probe_target"  # the function `/bin/target call N` calls N times


def build_probe_root(root: Path) -> Path:
    """Makes `root` a container root holding one statically linked program, /bin/target
    (e2e/probe_target.c), to probe with uprobes. Returns root."""
    target = root / PROBE_TARGET.lstrip("/")
    target.parent.mkdir(parents=True, exist_ok=True)
    source = Path(__file__).with_name("probe_target.c")
    subprocess.run(["gcc", "-O2", "-static", "-o", str(target), str(source)], check=True, timeout=120)
    return root


def wait_chrooted(pid: int, root: Path, timeout: float = 5.0) -> None:
    """Waits until `chroot` has entered `root` in process pid: Popen returns once chroot(8) runs,
    a moment before /proc/<pid>/root is the new root."""
    deadline = time.monotonic() + timeout
    while os.readlink(f"/proc/{pid}/root") != str(root.resolve()):
        if time.monotonic() > deadline:
            raise RuntimeError(f"process {pid} did not enter {root} within {timeout}s")
        time.sleep(0.005)


def _python_argv(script: str, *args: object) -> list[str]:
    # -I -S: isolated and without site-packages, so the helper starts fast and sees only the stdlib.
    return [sys.executable, "-I", "-S", "-c", script, *(str(arg) for arg in args)]


@dataclass(frozen=True)
class UdpResult:
    """What send_udp saw: datagrams the kernel accepted, and failed sends counted by errno."""

    sent: int
    errors: dict[int, int]


@dataclass
class SimPod:
    """A simulated pod: its API identity, its cgroups and the pid of its container's process."""

    name: str
    namespace: str
    uid: str
    qos: QosClass
    container_id: str
    pod_cgroup: Path
    container_cgroup: Path
    pid: int
    labels: dict[str, str] = field(default_factory=dict)
    # Its own network namespace and veth pair, when created with network=True; else the host's.
    network: PodNetwork | None = None
    # The container's root directory (its processes run chrooted into it), or None for the host's.
    root: Path | None = None
    _proc: subprocess.Popen[bytes] | None = field(default=None, repr=False, compare=False)

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"

    def is_running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def describe(self) -> dict[str, Any]:
        """JSON-friendly summary (for logs and the CLI)."""
        return {
            "name": self.name,
            "namespace": self.namespace,
            "uid": self.uid,
            "qos": self.qos,
            "container_id": self.container_id,
            "pod_cgroup": str(self.pod_cgroup),
            "container_cgroup": str(self.container_cgroup),
            "pid": self.pid,
            "labels": dict(self.labels),
        }

    def run(
        self, argv: Sequence[str], timeout: float = 30.0, input: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        """Runs a command inside the pod's container cgroup (and network namespace, if it has one),
        so its traffic is the pod's traffic; chrooted into the pod's root, if it has one."""
        if self.root is not None:
            argv = ["chroot", str(self.root), *argv]
        if self.network is not None:
            argv = self.network.exec_argv(argv)
        return run_in_cgroup(argv, self.container_cgroup, timeout, input)

    def connect_tcp(self, host: str, port: int, timeout: float = 2.0) -> int:
        """Opens a TCP connection from the pod: 0 on success, else the errno connect() failed with."""
        result = self.run(_python_argv(_CONNECT_TCP_SCRIPT, host, port, timeout), timeout=timeout + 15)
        return int(self._script_output(result, "connect_tcp"))

    def send_udp(self, host: str, port: int, count: int, size: int = 64) -> UdpResult:
        """Sends `count` datagrams of `size` bytes from the pod."""
        result = self.run(_python_argv(_SEND_UDP_SCRIPT, host, port, count, size), timeout=30 + count / 100)
        data = json.loads(self._script_output(result, "send_udp"))
        return UdpResult(sent=data["sent"], errors={int(k): v for k, v in data["errors"].items()})

    def _script_output(self, result: subprocess.CompletedProcess[str], what: str) -> str:
        if result.returncode != 0:
            detail = result.stderr.strip()
            raise RuntimeError(f"{what} in pod {self.key} exited {result.returncode}: {detail}")
        return result.stdout.strip()


# Sends datagrams of 64 bytes to 127.0.0.1:port, `batch` at a time `pause` seconds apart, until a
# line arrives on stdin, then prints how many it sent. A send that succeeded went through the egress
# hook (a program that drops makes sendto fail), so a counter must count each one exactly once.
_SEND_UNTIL_STOPPED_SCRIPT = """
import select, socket, sys, time
port, batch, pause, sent = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3]), 0
with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
    while not select.select([sys.stdin], [], [], 0)[0]:
        for _ in range(batch):
            try:
                sock.sendto(b"x" * 64, ("127.0.0.1", port))
                sent += 1
            except OSError:
                pass
        time.sleep(pause)
print(sent, flush=True)
"""


class UdpSender:
    """A process in `cgroup` sending datagrams to a loopback port until stopped."""

    def __init__(self, cgroup: Path, port: int, batch: int = 10, pause: float = 0.005) -> None:
        argv = _python_argv(_SEND_UNTIL_STOPPED_SCRIPT, port, batch, pause)
        self.proc = spawn_in_cgroup(argv, cgroup, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)

    def running(self) -> bool:
        return self.proc.poll() is None

    def stop(self) -> int:
        """Stops it and returns how many datagrams it sent."""
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write("stop\n")
        self.proc.stdin.flush()
        if not select.select([self.proc.stdout], [], [], 10)[0]:
            raise RuntimeError("the sender did not stop")
        sent = int(self.proc.stdout.readline())
        self.proc.wait(10)
        return sent

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
