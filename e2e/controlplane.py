"""A real Kubernetes control plane (etcd, kube-apiserver, kube-controller-manager) on loopback.

etcd and an API server as tests need them, plus a controller manager so that garbage collection,
namespace deletion and service accounts work. Its parts: what runs and how it is started
(e2e/controlplane_setup.py), the certificates and kubeconfig (e2e/controlplane_pki.py) and the
command line (e2e/controlplane_cli.py). Everything lives in one state directory:

    <state>/kubeconfig            admin kubeconfig, context "bpfleet-local"
    <state>/controlplane.json     ports and binary directory of the current run
    <state>/pids/<name>.pid       one per process
    <state>/logs/<name>.log       stdout+stderr of each process
    <state>/pki/                  CA, serving cert, admin cert, service-account keys
    <state>/etcd/                 etcd data (wiped on every fresh start)

CLI: python -m e2e.controlplane [--state-dir DIR] {up,down,status,kubeconfig}
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import signal
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from types import TracebackType

from e2e.controlplane_pki import LOOPBACK, Pki, generate_pki, issue_client_cert, write_kubeconfig
from e2e.controlplane_setup import (
    BUILD_SCRIPT,
    COMPONENTS,
    KUBE_VERSION,
    Ports,
    RunInfo,
    apiserver_args,
    binaries_present,
    build_binaries,
    controller_manager_args,
    default_state_dir,
    etcd_args,
    expected_bin_dir,
    free_ports,
    log,
)

# What the rest of the suites import from here.
__all__ = [
    "BUILD_SCRIPT",
    "KUBE_VERSION",
    "ControlPlane",
    "Pki",
    "binaries_present",
    "expected_bin_dir",
    "issue_client_cert",
    "running_control_plane",
    "write_kubeconfig",
]


def _proc_state(pid: int) -> str | None:
    """Single-letter state from /proc/<pid>/stat, None when the pid does not exist."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    # The command name is in parentheses and may contain spaces: the state follows the last ')'.
    return stat.rpartition(")")[2].split()[0]


def _proc_cmdline(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except (FileNotFoundError, ProcessLookupError):
        return []


def _tail(path: Path, lines: int = 25) -> str:
    if not path.exists():
        return "(no log)"
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


@contextlib.contextmanager
def running_control_plane(state_dir: Path) -> Iterator[ControlPlane]:
    """A control plane started in `state_dir` for the length of the block, stopped after it whatever
    happens (tests' fixtures)."""
    plane = ControlPlane(state_dir=state_dir)
    plane.start()
    try:
        yield plane
    finally:
        plane.stop()


class ControlPlane:
    """etcd + kube-apiserver + kube-controller-manager on 127.0.0.1, owned by one state directory.

    As a context manager it starts on entry and, on exit, stops only what this instance started:
    a control plane that was already running (e.g. from `python -m e2e.controlplane up`) is reused
    and left running.
    """

    def __init__(
        self,
        state_dir: Path | str | None = None,
        bin_dir: Path | None = None,
        extra_controllers: tuple[str, ...] = (),
    ) -> None:
        self.state_dir = Path(state_dir or default_state_dir()).expanduser().resolve()
        self._bin_dir = bin_dir
        # A cluster with a real node also runs workloads: deployments, replica sets, daemon sets.
        self._extra_controllers = extra_controllers
        self._procs: dict[str, subprocess.Popen[bytes]] = {}
        self._owns_processes = False

    # -- paths and properties

    @property
    def kubeconfig(self) -> Path:
        return self.state_dir / "kubeconfig"

    @property
    def server_url(self) -> str:
        return f"https://{LOOPBACK}:{self._run_info().ports.apiserver}"

    @property
    def pki(self) -> Pki:
        return Pki(self.state_dir / "pki")

    def log_path(self, name: str) -> Path:
        return self.state_dir / "logs" / f"{name}.log"

    def _pid_path(self, name: str) -> Path:
        return self.state_dir / "pids" / f"{name}.pid"

    def _run_info_path(self) -> Path:
        return self.state_dir / "controlplane.json"

    def _run_info(self) -> RunInfo:
        path = self._run_info_path()
        if not path.exists():
            raise RuntimeError(f"no control plane has been started from {self.state_dir}")
        return RunInfo.load(path)

    # -- process bookkeeping

    def pids(self) -> dict[str, int]:
        """Recorded pids by component (only those with a pid file)."""
        found = {}
        for name in COMPONENTS:
            with contextlib.suppress(FileNotFoundError, ValueError):
                found[name] = int(self._pid_path(name).read_text().strip())
        return found

    def process_alive(self, name: str, pid: int) -> bool:
        """Whether pid is still the named component of this state dir (not a zombie, not a reused pid)."""
        proc = self._procs.get(name)
        if proc is not None and proc.pid == pid:
            return proc.poll() is None  # also reaps our own exited children
        if _proc_state(pid) in (None, "Z", "X"):
            return False
        # Guard against pid reuse: the process must be this binary working on this state dir.
        cmdline = _proc_cmdline(pid)
        return (
            bool(cmdline)
            and Path(cmdline[0]).name == name
            and any(str(self.state_dir) in arg for arg in cmdline[1:])
        )

    def is_running(self) -> bool:
        """All three processes recorded in the state dir are alive (says nothing about health)."""
        pids = self.pids()
        return len(pids) == len(COMPONENTS) and all(self.process_alive(n, p) for n, p in pids.items())

    def _dead_components(self) -> list[str]:
        pids = self.pids()
        return [name for name in COMPONENTS if name in pids and not self.process_alive(name, pids[name])]

    # -- health

    def _ssl_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=str(self.pki.ca_crt))
        context.load_cert_chain(str(self.pki.admin_crt), str(self.pki.admin_key))
        return context

    def _http_status(self, url: str, context: ssl.SSLContext | None = None) -> int | None:
        """HTTP status of a GET, None when nothing answers (yet)."""
        try:
            with urllib.request.urlopen(url, timeout=3, context=context) as response:
                return int(response.status)
        except urllib.error.HTTPError as error:
            return error.code
        except (urllib.error.URLError, OSError):
            return None

    def _etcd_healthy(self) -> bool:
        return self._http_status(f"http://{LOOPBACK}:{self._run_info().ports.etcd_client}/health") == 200

    def _apiserver_ready(self) -> bool:
        return self._http_status(f"{self.server_url}/readyz", self._ssl_context()) == 200

    def _controller_manager_healthy(self) -> bool:
        url = f"https://{LOOPBACK}:{self._run_info().ports.controller_manager}/healthz"
        return self._http_status(url, self._ssl_context()) == 200

    def _default_service_account_exists(self) -> bool:
        # Pods are rejected by ServiceAccount admission until the controller creates this one.
        url = f"{self.server_url}/api/v1/namespaces/default/serviceaccounts/default"
        return self._http_status(url, self._ssl_context()) == 200

    def healthy(self) -> bool:
        """Processes alive and the apiserver answers /readyz."""
        try:
            return self.is_running() and self._apiserver_ready()
        except (RuntimeError, OSError, ssl.SSLError):
            return False

    def _poll(self, what: str, check: Callable[[], bool], deadline: float) -> None:
        started = time.monotonic()
        while not check():
            dead = self._dead_components()
            if dead:
                name = dead[0]
                raise RuntimeError(
                    f"{name} exited while waiting for {what}; last log lines of "
                    f"{self.log_path(name)}:\n{_tail(self.log_path(name))}"
                )
            if time.monotonic() > deadline:
                raise TimeoutError(f"timed out waiting for {what}; logs are in {self.state_dir / 'logs'}")
            time.sleep(0.25)
        log(f"{what} ok", seconds=f"{time.monotonic() - started:.1f}")

    def wait_ready(self, timeout: float = 90.0) -> None:
        """Blocks until the apiserver is ready, the controller manager is healthy and pods can be created."""
        deadline = time.monotonic() + timeout
        self._poll("kube-apiserver /readyz", self._apiserver_ready, deadline)
        self._poll("kube-controller-manager /healthz", self._controller_manager_healthy, deadline)
        self._poll("default service account", self._default_service_account_exists, deadline)

    # -- start / stop

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """Serialises start/stop across processes sharing this state dir."""
        self.state_dir.mkdir(parents=True, exist_ok=True)
        with open(self.state_dir / ".lock", "w") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def start(self, timeout: float = 120.0) -> None:
        """Reuses a healthy control plane from this state dir, else cleans up and starts a fresh one."""
        with self._locked():
            if self.healthy():
                log(
                    "reusing running control plane",
                    state=self.state_dir,
                    server=self.server_url,
                    pids=",".join(str(p) for p in self.pids().values()),
                )
                return
            self._stop_unlocked()
            try:
                self._start_fresh(timeout)
            except BaseException:
                log("start failed; stopping what was started", logs=self.state_dir / "logs")
                self._stop_unlocked()
                raise

    def _start_fresh(self, timeout: float) -> None:
        started = time.monotonic()
        deadline = started + timeout
        bin_dir = self._bin_dir or build_binaries()
        for sub in ("etcd", "pki"):
            shutil.rmtree(self.state_dir / sub, ignore_errors=True)
        for sub in ("logs", "pids", "etcd"):
            (self.state_dir / sub).mkdir(parents=True, exist_ok=True)
        (self.state_dir / "etcd").chmod(0o700)  # etcd refuses data dirs readable by others

        ports = Ports(*free_ports(4))
        RunInfo(bin_dir=str(bin_dir), ports=ports).save(self._run_info_path())
        log("generating certificates", dir=self.pki.dir)
        pki = generate_pki(self.pki.dir)
        write_kubeconfig(self.kubeconfig, self.server_url, pki)
        controller_kubeconfig = pki.dir / "controller-manager.kubeconfig"
        write_kubeconfig(controller_kubeconfig, self.server_url, pki)

        log(f"starting etcd on {LOOPBACK}:{ports.etcd_client}")
        self._spawn("etcd", bin_dir, etcd_args(self.state_dir, ports))
        self._poll("etcd /health", self._etcd_healthy, deadline)

        log(f"starting kube-apiserver on {LOOPBACK}:{ports.apiserver}")
        self._spawn("kube-apiserver", bin_dir, apiserver_args(ports, pki))
        self._poll("kube-apiserver /readyz", self._apiserver_ready, deadline)

        log(f"starting kube-controller-manager on {LOOPBACK}:{ports.controller_manager}")
        self._spawn(
            "kube-controller-manager",
            bin_dir,
            controller_manager_args(ports, pki, controller_kubeconfig, self._extra_controllers),
        )
        self.wait_ready(max(deadline - time.monotonic(), 1.0))
        log(
            "control plane ready",
            server=self.server_url,
            kubeconfig=self.kubeconfig,
            seconds=f"{time.monotonic() - started:.1f}",
        )

    # -- one component at a time (fault tests)

    def stop_component(self, name: str, timeout: float = 15.0, crash: bool = False) -> None:
        """Stops one component of a running control plane; its data and certificates stay. `crash`
        SIGKILLs it: no graceful shutdown (a kube-apiserver with open watches drains them >15 s)."""
        with self._locked():
            pid = self.pids().get(name)
            if pid is not None and self.process_alive(name, pid):
                if crash:
                    log(f"killing {name}", pid=pid)
                    self._signal_group(pid, signal.SIGKILL)
                    if not self._wait_exit(name, pid, 5.0):
                        raise RuntimeError(f"{name} (pid {pid}) survived SIGKILL")
                else:
                    self._terminate(name, pid, timeout)
            self._pid_path(name).unlink(missing_ok=True)
            self._procs.pop(name, None)

    def start_component(self, name: str, timeout: float = 60.0) -> None:
        """Starts a stopped component again with the ports, certificates and data of this run, and
        waits until it serves."""
        with self._locked():
            info = self._run_info()
            pki = self.pki
            args = {
                "etcd": lambda: etcd_args(self.state_dir, info.ports),
                "kube-apiserver": lambda: apiserver_args(info.ports, pki),
                "kube-controller-manager": lambda: controller_manager_args(
                    info.ports, pki, pki.dir / "controller-manager.kubeconfig", self._extra_controllers
                ),
            }[name]()
            self._spawn(name, Path(info.bin_dir), args)
            deadline = time.monotonic() + timeout
            check = {
                "etcd": self._etcd_healthy,
                "kube-apiserver": self._apiserver_ready,
                "kube-controller-manager": self._controller_manager_healthy,
            }[name]
            self._poll(f"{name} serving again", check, deadline)

    def _spawn(self, name: str, bin_dir: Path, args: list[str]) -> None:
        log_path = self.log_path(name)
        if log_path.exists():
            log_path.replace(log_path.with_suffix(".log.1"))  # keep the previous run for post-mortems
        with open(log_path, "wb") as log_file:
            # Own session: survives the CLI that started it, and stop() can signal the whole group.
            proc = subprocess.Popen(
                [str(bin_dir / name), *args],
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                cwd=self.state_dir,
            )
        self._procs[name] = proc
        self._owns_processes = True
        self._pid_path(name).write_text(f"{proc.pid}\n")
        log(f"{name} started", pid=proc.pid, log=log_path)

    def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM each process group (reverse start order), SIGKILL after timeout, remove pid files."""
        with self._locked():
            self._stop_unlocked(timeout)

    def _stop_unlocked(self, timeout: float = 15.0) -> None:
        pids = self.pids()
        for name in reversed(COMPONENTS):
            pid = pids.get(name)
            if pid is not None and self.process_alive(name, pid):
                self._terminate(name, pid, timeout)
            self._pid_path(name).unlink(missing_ok=True)
            self._procs.pop(name, None)
        self._owns_processes = False

    def _terminate(self, name: str, pid: int, timeout: float) -> None:
        started = time.monotonic()
        log(f"stopping {name}", pid=pid)
        self._signal_group(pid, signal.SIGTERM)
        if not self._wait_exit(name, pid, timeout):
            log(f"{name} ignored SIGTERM; sending SIGKILL", pid=pid, waited=f"{timeout:.0f}s")
            self._signal_group(pid, signal.SIGKILL)
            if not self._wait_exit(name, pid, 5.0):
                raise RuntimeError(f"{name} (pid {pid}) survived SIGKILL")
        log(f"{name} stopped", pid=pid, seconds=f"{time.monotonic() - started:.1f}")

    @staticmethod
    def _signal_group(pid: int, sig: signal.Signals) -> None:
        # Each component leads its own session, so its pid is also its process-group id.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, sig)

    def _wait_exit(self, name: str, pid: int, timeout: float) -> bool:
        proc = self._procs.get(name)
        if proc is not None and proc.pid == pid:
            try:
                proc.wait(timeout)
                return True
            except subprocess.TimeoutExpired:
                return False
        # Not our child (started by another process): poll /proc instead of waitpid.
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.process_alive(name, pid):
                return True
            time.sleep(0.1)
        return not self.process_alive(name, pid)

    # -- context manager

    def __enter__(self) -> ControlPlane:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self._owns_processes:
            self.stop()


if __name__ == "__main__":
    from e2e.controlplane_cli import main

    sys.exit(main())
