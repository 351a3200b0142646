"""A cgroup per compile worker, bounding its memory and CPU where the host offers the controllers.

cgroup v2 is used when its root has the memory controller enabled for its children; otherwise the
v1 memory and cpu hierarchies when they are mounted (hybrid hosts); otherwise none, and the
worker's rlimits are the only bounds. The agent makes the cgroup before the worker gets its
request, and removes it once every process in it is gone, also after a timeout or a crash of the
worker. The cgroups of a killed agent are taken over by the next agent of its node: their names
carry the node's own prefix, so that it kills and removes all of them at its start. BPF map
memory is charged to the memory cgroup of its creator (Linux 5.11+), so the memory limit also
bounds what a huge map allocates while it is created.
"""

from __future__ import annotations

import contextlib
import hashlib
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


def node_prefix(node: str) -> str:
    """The compile cgroups' prefix of the agent serving `node`: its own, even where several agents
    share one host (the test harness), so that it can take over what its predecessor left."""
    return f"{PREFIX}{hashlib.sha256(node.encode()).hexdigest()[:8]}-"


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
    def detect(cls, prefix: str = PREFIX, owned: bool = False) -> CgroupPlacement | None:
        """`owned`: no other live process makes cgroups with `prefix` (the agent's node_prefix)."""
        mounts = _mounts()
        placement = None
        for point, fstype, _ in mounts:
            controls = Path(point) / "cgroup.subtree_control"
            if fstype == "cgroup2" and controls.exists():
                enabled = set(controls.read_text().split())
                if "memory" in enabled:
                    root = Path(point)
                    placement = cls(root, root if "cpu" in enabled else None, True, prefix)
                    break
        v1 = {opt: Path(point) for point, fstype, opts in mounts if fstype == "cgroup" for opt in opts}
        if placement is None and "memory" in v1:
            placement = cls(v1["memory"], v1.get("cpu"), False, prefix)
        if placement is not None and owned:
            placement.take_over()
        elif placement is not None:
            placement.tidy()
        return placement

    def _left(self) -> set[str]:
        """The names of this prefix's cgroups there now, in either hierarchy."""
        roots = {self.memory_root, self.cpu_root} - {None}
        return {d.name for root in roots if root is not None for d in root.glob(self.prefix + "*")}

    def _named(self, name: str) -> CompileCgroup:
        cpu = self.cpu_root / name if self.cpu_root is not None else None
        return CompileCgroup(self.memory_root / name, cpu, self.v2)

    def tidy(self) -> None:
        """Removes empty cgroups a killed process left behind, with a prefix others may share: rmdir
        refuses one with processes in it, and a recent one may be another backend's, made a moment
        before its worker joins it."""
        for name in self._left():
            for stale in self._named(name).dirs():
                with contextlib.suppress(OSError):
                    if time.time() - stale.stat().st_ctime > _STALE_SECONDS:
                        stale.rmdir()

    def take_over(self) -> None:
        """Kills and removes what a dead predecessor with this (owned) prefix left: the cgroups of
        its workers, and any worker still in them (one finishing a compile nobody will read)."""
        left = self._left()
        for name in left:
            self._named(name).remove()
        if left:
            log.info("removed compile cgroups a previous agent left", extra={"cgroups": sorted(left)})

    def create(self, limits: CompileLimits) -> CompileCgroup:
        cgroup = self._named(self.prefix + secrets.token_hex(6))
        try:
            for d in cgroup.dirs():
                d.mkdir()
            self._limit(cgroup, limits)
        except (OSError, SandboxError) as e:
            cgroup.remove()
            raise SandboxError(f"cannot make the compile cgroup {cgroup.memory}: {e}") from e
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
