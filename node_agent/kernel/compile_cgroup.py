"""A cgroup per compile worker, bounding its memory and CPU where the host offers the controllers.

cgroup v2 is used when its root has the memory controller enabled for its children; otherwise the
v1 memory and cpu hierarchies when they are mounted (hybrid hosts); otherwise none, and the
worker's rlimits are the only bounds. The agent makes the cgroup before the worker gets its
request, and removes it once every process in it is gone, also after a timeout or a crash. BPF map
memory is charged to the memory cgroup of its creator (Linux 5.11+), so the memory limit also
bounds what a huge map allocates while it is created.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import signal
import time
from dataclasses import dataclass
from pathlib import Path

from node_agent.errors import SandboxError

log = logging.getLogger(__name__)

PREFIX = "bpfleet-compile-"
_CPU_PERIOD_US = 100_000
_STALE_SECONDS = 600


@dataclass(frozen=True)
class CompileLimits:
    cpu_seconds: int = 60  # RLIMIT_CPU of the compile
    memory_bytes: int = 1 << 30  # the memory cgroup's limit (else RLIMIT_DATA)
    cpu_cores: float = 1.0  # the CPU bandwidth of the cgroup
    file_bytes: int = 64 << 20  # RLIMIT_FSIZE, and the size of the sandbox's /tmp


def _mounts() -> list[tuple[str, str, set[str]]]:
    """(mount point, fs type, options) of every mount of this process."""
    found = []
    with open("/proc/self/mounts") as mounts:
        for line in mounts:
            fields = line.split()
            if len(fields) >= 4:
                found.append((fields[1], fields[2], set(fields[3].split(","))))
    return found


def _write(path: Path, value: str) -> None:
    try:
        path.write_text(value)
    except OSError as e:
        raise SandboxError(f"cannot set {path} to {value}: {e}") from e


class CompileCgroup:
    """One worker's cgroup: one directory on cgroup v2, a memory and a cpu directory on v1."""

    def __init__(self, memory: Path, cpu: Path | None, v2: bool) -> None:
        self.memory, self.cpu, self.v2 = memory, cpu, v2

    def dirs(self) -> list[Path]:
        return list(dict.fromkeys(d for d in (self.memory, self.cpu) if d is not None))

    def add(self, pid: int) -> None:
        for d in self.dirs():
            _write(d / "cgroup.procs", str(pid))

    def pids(self) -> set[int]:
        found: set[int] = set()
        for d in self.dirs():
            with contextlib.suppress(OSError):
                found.update(int(p) for p in (d / "cgroup.procs").read_text().split())
        return found

    def kill(self, spare: int = 0) -> None:
        """SIGKILLs every process in the cgroup but `spare`."""
        if not spare and self.v2 and (self.memory / "cgroup.kill").exists():
            with contextlib.suppress(OSError):
                (self.memory / "cgroup.kill").write_text("1")
        for pid in self.pids() - {spare}:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    def oom_killed(self) -> bool:
        """Whether the memory limit made the kernel kill a process of the cgroup."""
        name = "memory.events" if self.v2 else "memory.oom_control"
        try:
            for line in (self.memory / name).read_text().splitlines():
                key, _, value = line.partition(" ")
                if key == "oom_kill" and int(value) > 0:
                    return True
        except OSError:
            pass
        return False

    def remove(self, timeout: float = 5.0) -> None:
        """Kills what is left and removes the directories; a process being reaped delays rmdir."""
        deadline = time.monotonic() + timeout
        for d in self.dirs():
            while True:
                try:
                    d.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        log.warning("cannot remove a compile cgroup", extra={"cgroup": str(d)})
                        break
                    self.kill()
                    time.sleep(0.01)


class CgroupPlacement:
    """Where this host's compile cgroups go; detect() finds it once, create() makes one per worker."""

    def __init__(self, memory_root: Path, cpu_root: Path | None, v2: bool, prefix: str = PREFIX) -> None:
        self.memory_root, self.cpu_root, self.v2, self.prefix = memory_root, cpu_root, v2, prefix

    @classmethod
    def detect(cls, prefix: str = PREFIX) -> CgroupPlacement | None:
        mounts = _mounts()
        for point, fstype, _ in mounts:
            controls = Path(point) / "cgroup.subtree_control"
            if fstype == "cgroup2" and controls.exists():
                enabled = set(controls.read_text().split())
                if "memory" in enabled:
                    root = Path(point)
                    return cls(root, root if "cpu" in enabled else None, True, prefix).tidy()
        v1 = {opt: Path(point) for point, fstype, opts in mounts if fstype == "cgroup" for opt in opts}
        if "memory" in v1:
            return cls(v1["memory"], v1.get("cpu"), False, prefix).tidy()
        return None

    def tidy(self) -> CgroupPlacement:
        """Removes empty cgroups a killed agent left behind (rmdir refuses one with processes in it;
        a recent one may be another backend's, made a moment before its worker joins it)."""
        for root in {self.memory_root, self.cpu_root} - {None}:
            assert root is not None
            for stale in root.glob(self.prefix + "*"):
                with contextlib.suppress(OSError):
                    if time.time() - stale.stat().st_ctime > _STALE_SECONDS:
                        stale.rmdir()
        return self

    def create(self, limits: CompileLimits) -> CompileCgroup:
        name = self.prefix + secrets.token_hex(6)
        memory = self.memory_root / name
        cpu = self.cpu_root / name if self.cpu_root is not None else None
        cgroup = CompileCgroup(memory, cpu, self.v2)
        try:
            for d in cgroup.dirs():
                d.mkdir()
            self._limit(cgroup, limits)
        except (OSError, SandboxError) as e:
            cgroup.remove()
            raise SandboxError(f"cannot make the compile cgroup {memory}: {e}") from e
        return cgroup

    def _limit(self, cgroup: CompileCgroup, limits: CompileLimits) -> None:
        quota = max(1000, int(limits.cpu_cores * _CPU_PERIOD_US))
        if self.v2:
            _write(cgroup.memory / "memory.max", str(limits.memory_bytes))
            if (cgroup.memory / "memory.swap.max").exists():
                _write(cgroup.memory / "memory.swap.max", "0")
            if cgroup.cpu is not None:
                _write(cgroup.cpu / "cpu.max", f"{quota} {_CPU_PERIOD_US}")
            return
        _write(cgroup.memory / "memory.limit_in_bytes", str(limits.memory_bytes))
        memsw = cgroup.memory / "memory.memsw.limit_in_bytes"
        if memsw.exists():
            _write(memsw, str(limits.memory_bytes))  # no swapping past the limit either
        if cgroup.cpu is not None:
            _write(cgroup.cpu / "cpu.cfs_period_us", str(_CPU_PERIOD_US))
            _write(cgroup.cpu / "cpu.cfs_quota_us", str(quota))
