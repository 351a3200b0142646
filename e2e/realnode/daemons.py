"""Long-running processes that outlive the command that started them (make cluster-up, then
make cluster-test), found again through pid files and checked by their command line."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path


def log(message: str, **fields: object) -> None:
    extra = "".join(f" {key}={value}" for key, value in fields.items())
    print(f"[realnode] {message}{extra}", file=sys.stderr, flush=True)


def _cmdline(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return []


def _state(pid: int) -> str | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except OSError:
        return None


def pids_with_argument(binary: str, argument: str) -> list[int]:
    """Processes of `binary` with `argument` among their arguments: ours, even without a pid file
    (a shim containerd started, a daemon whose pid file a crash lost)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        cmdline = _cmdline(int(entry.name))
        if cmdline and Path(cmdline[0]).name == binary and any(argument in arg for arg in cmdline[1:]):
            found.append(int(entry.name))
    return found


def _group_alive(pgid: int) -> bool:
    """Whether a live process of the group is left (zombies are their reaper's, not ours)."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rpartition(")")[2].split()
        except OSError:
            continue  # gone meanwhile
        if len(fields) > 2 and fields[2] == str(pgid) and fields[0] not in ("Z", "X"):
            return True
    return False


@dataclass(frozen=True)
class Daemon:
    """One process of the real node. `marker` is a path only its own command line carries."""

    name: str
    pid_dir: Path
    log_dir: Path
    marker: str
    binary: str = ""  # the executable's file name, when it is not `name` (python)

    @property
    def executable(self) -> str:
        return self.binary or self.name

    @property
    def pid_file(self) -> Path:
        return self.pid_dir / f"{self.name}.pid"

    @property
    def log_file(self) -> Path:
        return self.log_dir / f"{self.name}.log"

    def pid(self) -> int | None:
        with contextlib.suppress(OSError, ValueError):
            pid = int(self.pid_file.read_text().strip())
            if self._is_ours(pid):
                return pid
        return None

    def _is_ours(self, pid: int) -> bool:
        if _state(pid) in (None, "Z", "X"):
            return False
        cmdline = _cmdline(pid)
        return (
            bool(cmdline)
            and Path(cmdline[0]).name == self.executable
            and any(self.marker in arg for arg in cmdline[1:])
        )

    def running(self) -> bool:
        return self.pid() is not None

    def start(self, argv: list[str], env: dict[str, str] | None = None) -> int:
        self.pid_dir.mkdir(parents=True, exist_ok=True)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        if self.log_file.exists():
            self.log_file.replace(self.log_file.with_suffix(".log.1"))  # the previous run, for post-mortems
        with open(self.log_file, "wb") as out:
            # Own session: survives the CLI, and stop() signals the whole group.
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                env={**os.environ, **(env or {})},
            )
        self.pid_file.write_text(f"{proc.pid}\n")
        log(f"{self.name} started", pid=proc.pid, log=self.log_file)
        return proc.pid

    def tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def stop(self, timeout: float = 20.0) -> None:
        """SIGTERM to its group, SIGKILL after `timeout`; also any stray process with its marker."""
        pids = set(pids_with_argument(self.executable, self.marker))
        pid = self.pid()
        if pid is not None:
            pids.add(pid)

        def alive() -> bool:
            # The whole group, not its leader alone: a child signalled with it may still be dying.
            return any(self._is_ours(p) for p in pids) or (pid is not None and _group_alive(pid))

        for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 5.0)):
            for target in pids:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(target, sig) if target == pid else os.kill(target, sig)
            deadline = time.monotonic() + wait
            while time.monotonic() < deadline and alive():
                time.sleep(0.1)
            if not alive():
                break
        self.pid_file.unlink(missing_ok=True)
        if pids:
            log(f"{self.name} stopped", pids=",".join(map(str, sorted(pids))))
