"""bpfleet on this host: CRDs on a control plane, the operator, and one agent per simulated node.

Used by the end-to-end suites and by the demo. Every component runs as the real program in its own
process, configured the way the Helm chart configures it, and talks to the API server over TLS.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from e2e.tools import REPO_ROOT, tool_path


def log(message: str, **fields: object) -> None:
    extra = " ".join(f"{k}={v}" for k, v in fields.items())
    print(f"[bpfleet] {message}" + (f" {extra}" if extra else ""), file=sys.stderr, flush=True)


def kubectl_run(kubeconfig: Path, *args: str, input: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(tool_path("kubectl")), "--kubeconfig", str(kubeconfig), *args],
        input=input,
        capture_output=True,
        text=True,
        check=False,
    )


def kubectl(kubeconfig: Path, *args: str, input: str | None = None, check: bool = True) -> str:
    result = kubectl_run(kubeconfig, *args, input=input)
    if check and result.returncode != 0:
        raise RuntimeError(f"kubectl {' '.join(args)} failed: {result.stderr.strip()}")
    return result.stdout


def install_crds(kubeconfig: Path) -> None:
    log("installing CRDs", source="crds/")
    kubectl(kubeconfig, "apply", "--server-side", "--force-conflicts", "-f", str(REPO_ROOT / "crds"))
    kubectl(
        kubeconfig,
        "wait",
        "--for=condition=Established",
        "--timeout=60s",
        *(f"crd/{p.stem.split('_', 1)[1]}.bpfleet.io" for p in sorted((REPO_ROOT / "crds").glob("*.yaml"))),
    )


@dataclass
class ManagedProcess:
    """One bpfleet component: started in its own session, logs to a file, stopped on request."""

    name: str
    argv: list[str]
    env: dict[str, str]
    log_path: Path
    process: subprocess.Popen[bytes] | None = None
    _log: IO[bytes] | None = field(default=None, repr=False)

    def start(self) -> ManagedProcess:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(self.log_path, "ab")
        self.process = subprocess.Popen(
            self.argv,
            env={**os.environ, **self.env},
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            cwd=REPO_ROOT.parent,  # not the repo root: operator/ must never shadow the stdlib module
        )
        log(f"started {self.name}", pid=self.process.pid, log=self.log_path)
        return self

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.alive:
            assert self.process is not None
            os.killpg(self.process.pid, sig)
            self.process.wait(timeout=30)

    def stop(self, timeout: float = 10.0) -> None:
        if self.alive:
            assert self.process is not None
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        if self._log is not None:
            self._log.close()
            self._log = None

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


def free_address() -> str:
    """A loopback host:port free right now, for a component's metrics."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{probe.getsockname()[1]}"


def operator_process(kubeconfig: Path, log_dir: Path, metrics_address: str = "") -> ManagedProcess:
    return ManagedProcess(
        "operator",
        [sys.executable, "-m", "bpfleet_operator.main"],
        # Empty turns metrics off: processes on one host must not share the default port.
        {"KUBECONFIG": str(kubeconfig), "BPFLEET_METRICS_ADDRESS": metrics_address},
        log_dir / "operator.log",
    )


def agent_process(
    kubeconfig: Path,
    node: str,
    kubelet_cgroup_root: Path,
    bpffs_root: Path,
    log_dir: Path,
    metrics_address: str = "",
) -> ManagedProcess:
    return ManagedProcess(
        f"agent {node}",
        [sys.executable, "-m", "node_agent.main"],
        {
            "KUBECONFIG": str(kubeconfig),
            "NODE_NAME": node,
            "BPFLEET_KUBELET_CGROUP_ROOT": str(kubelet_cgroup_root),
            "BPFLEET_BPFFS_ROOT": str(bpffs_root),
            "BPFLEET_METRICS_ADDRESS": metrics_address,
            # One container-start hook socket per agent: several agents share this host.
            "BPFLEET_HOOK_SOCKET": str(hook_socket(log_dir, node)),
        },
        log_dir / f"agent-{node}.log",
    )


def hook_socket(log_dir: Path, node: str) -> Path:
    """Where the agent of `node` started by agent_process answers container-start hooks."""
    return log_dir / f"hook-{node}.sock"


def wait_for(what: str, predicate: object, timeout: float = 10.0, interval: float = 0.05) -> float:
    """Polls `predicate()` until it is truthy; returns the seconds it took, or raises TimeoutError."""
    assert callable(predicate)
    start = time.monotonic()
    last_error: Exception | None = None
    while time.monotonic() - start < timeout:
        try:
            if predicate():
                return time.monotonic() - start
        except Exception as e:  # the object may not exist yet
            last_error = e
        time.sleep(interval)
    raise TimeoutError(
        f"timed out after {timeout:.0f}s waiting for {what}" + (f" ({last_error})" if last_error else "")
    )
