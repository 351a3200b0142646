"""A source that makes clang eat CPU or memory is stopped at the worker's limits; the agent lives on.

The limits are the worker's RLIMIT_CPU and its cgroup's memory limit (this host: cgroup v1 memory
and cpu). Each backend here gets its own cgroup name prefix, so the tests see their own cgroups
only, and a fixture removes any left behind even when a test fails.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from e2e.harness import wait_for
from node_agent import errors
from node_agent.kernel.backend import ProgramBuild, ProgramRef
from node_agent.kernel.bpffs import BpffsBackend
from node_agent.kernel.compile_cgroup import CgroupPlacement, CompileLimits
from node_agent.kernel.worker_spares import SPARES
from tests.kernel.support import COUNTER, EGRESS, INCLUDE_DIR, cgroups_named, remove_cgroups

pytestmark = pytest.mark.kernel

TAIL = "int count_packets(struct __sk_buff *skb) { return 1; }\n"
# 2^40 additions for the preprocessor to evaluate: CPU first (its memory grows slowly).
CPU_BOMB = (
    "#define E0 1\n"
    + "".join(f"#define E{i} (E{i - 1} + E{i - 1})\n" for i in range(1, 41))
    + "#if E40\n#endif\n"
    + TAIL
)
# 2^40 initialisers for the parser to hold: memory first.
MEMORY_BOMB = (
    "#define M0 1,\n"
    + "".join(f"#define M{i} M{i - 1} M{i - 1}\n" for i in range(1, 41))
    + "int a[] = { M40 };\n"
    + TAIL
)


def _ref() -> ProgramRef:
    return ProgramRef("team-a", "bomb", secrets.token_hex(8))


@pytest.fixture
def prefix() -> Iterator[str]:
    """A cgroup name prefix of this test; its cgroups are killed and removed at the end."""
    name = f"bpfleet-compile-test{secrets.token_hex(3)}-"
    try:
        yield name
    finally:
        remove_cgroups(name)


def make_backend(bpffs_root: Path, prefix: str, **kwargs: object) -> BpffsBackend:
    return BpffsBackend(bpffs_root, include_dirs=(INCLUDE_DIR,), compile_cgroup_prefix=prefix, **kwargs)  # type: ignore[arg-type]


def test_this_host_gives_compile_workers_a_memory_cgroup(prefix):
    placement = CgroupPlacement.detect(prefix)
    assert placement is not None
    assert placement.cpu_root is not None


def test_a_preprocessor_bomb_stops_at_the_cpu_time_limit_and_the_agent_goes_on(bpffs_root, prefix):
    backend = make_backend(bpffs_root, prefix, compile_limits=CompileLimits(cpu_seconds=3))
    start = time.monotonic()
    with pytest.raises(errors.CompileError, match=r"hit the CPU time limit \(3 s\)"):
        backend.load(_ref(), ProgramBuild(CPU_BOMB, "count_packets", EGRESS))
    assert time.monotonic() - start < 20
    assert cgroups_named(prefix) == []
    assert backend.load(_ref(), COUNTER).prog_id > 0


def test_a_parser_bomb_stops_at_the_memory_limit(bpffs_root, prefix):
    backend = make_backend(bpffs_root, prefix, compile_limits=CompileLimits(memory_bytes=256 << 20))
    start = time.monotonic()
    with pytest.raises(errors.CompileError, match=r"hit the memory limit \(256 MiB\)"):
        backend.load(_ref(), ProgramBuild(MEMORY_BOMB, "count_packets", EGRESS))
    assert time.monotonic() - start < 30
    assert cgroups_named(prefix) == []
    # The limit leaves room for real programs.
    assert backend.load(_ref(), COUNTER).prog_id > 0


def test_without_a_cgroup_the_rlimits_still_stop_a_parser_bomb(bpffs_root, prefix):
    # As on a host whose cgroups offer no memory controller: RLIMIT_DATA is the bound.
    limits = CompileLimits(memory_bytes=512 << 20)
    backend = make_backend(bpffs_root, prefix, compile_limits=limits, compile_cgroups=False)
    assert backend.load(_ref(), COUNTER).prog_id > 0
    with (
        CgroupWatcher(prefix) as watcher,
        pytest.raises(errors.CompileError, match=r"memory limit \(512 MiB\)"),
    ):
        backend.load(_ref(), ProgramBuild(MEMORY_BOMB, "count_packets", EGRESS))
    assert watcher.pids == set()


class CgroupWatcher:
    """Polls, in a thread, for the cgroups of `prefix` and what they hold while a compile runs."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.seen: dict[str, dict[str, str]] = {}
        self.pids: set[int] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def __enter__(self) -> CgroupWatcher:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(10)

    def _poll(self) -> None:
        while not self._stop.is_set():
            for cgroup in cgroups_named(self.prefix):
                with contextlib.suppress(OSError):
                    procs = (cgroup / "cgroup.procs").read_text().split()
                    self.pids.update(int(p) for p in procs)
                    files = ("memory.limit_in_bytes", "memory.max", "cpu.cfs_quota_us", "cpu.max")
                    values = {f: (cgroup / f).read_text().strip() for f in files if (cgroup / f).exists()}
                    if procs:
                        self.seen[str(cgroup.parent.name)] = values
            time.sleep(0.02)


def test_a_compile_runs_in_its_own_limited_cgroup_which_is_removed_after(bpffs_root, prefix):
    limits = CompileLimits(cpu_seconds=3, memory_bytes=512 << 20, cpu_cores=1.0)
    backend = make_backend(bpffs_root, prefix, compile_limits=limits)
    with CgroupWatcher(prefix) as watcher, pytest.raises(errors.CompileError):
        backend.load(_ref(), ProgramBuild(CPU_BOMB, "count_packets", EGRESS))

    limits_seen = {k: v for values in watcher.seen.values() for k, v in values.items()}
    assert limits_seen.get("memory.limit_in_bytes", limits_seen.get("memory.max")) == str(512 << 20)
    assert limits_seen.get("cpu.cfs_quota_us", limits_seen.get("cpu.max", "").split(" ")[0]) == "100000"
    assert watcher.pids  # the worker and its sandboxed compile were in it
    assert cgroups_named(prefix) == []
    for pid in watcher.pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


def test_a_compile_past_the_wall_clock_timeout_is_killed_and_leaves_nothing(bpffs_root, prefix):
    backend = make_backend(bpffs_root, prefix, compile_timeout=2.0)
    start = time.monotonic()
    with CgroupWatcher(prefix) as watcher, pytest.raises(errors.CompileError, match="longer than 2s"):
        backend.load(_ref(), ProgramBuild(CPU_BOMB, "count_packets", EGRESS))
    assert time.monotonic() - start < 15
    assert watcher.pids
    assert cgroups_named(prefix) == []
    for pid in watcher.pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    assert [p for p in bpffs_root.rglob("*")] == []  # no staging directory, no version


def test_no_cgroup_is_left_after_ordinary_compiles(bpffs_root, prefix):
    backend = make_backend(bpffs_root, prefix)
    backend.load(_ref(), COUNTER)
    with pytest.raises(errors.CompileError):
        backend.load(_ref(), ProgramBuild("int count_packets(", "count_packets", EGRESS))
    # A failed build's cgroup is gone when it returns; a good one's a moment later (reaped off
    # the build's path, within the worker's exit grace).
    wait_for("every compile cgroup removed", lambda: cgroups_named(prefix) == [], timeout=10, interval=0.02)


def test_a_spare_bytecode_worker_waits_in_its_compile_cgroup_not_the_agents(bpffs_root, prefix, objects):
    """A spare is started before its build; it is bounded (and charged) as a build from its start."""
    SPARES.drop()
    try:
        backend = make_backend(bpffs_root, prefix, bytecode_dir=objects.dir)
        backend.loader.prime_bytecode()
        wait_for(
            "the spare's cgroup", lambda: _procs(cgroups_named(prefix)) != set(), timeout=30, interval=0.02
        )
        [spare] = _procs(cgroups_named(prefix))
        mine = Path("/proc/self/cgroup").read_text()
        assert Path(f"/proc/{spare}/cgroup").read_text() != mine
        # Every hierarchy the placement bounds holds it: memory, and cpu where there is one.
        assert all(str(spare) in (c / "cgroup.procs").read_text() for c in cgroups_named(prefix))
    finally:
        SPARES.drop()
    wait_for(
        "the dropped spare's cgroup removed", lambda: cgroups_named(prefix) == [], timeout=10, interval=0.02
    )


def _procs(dirs: list[Path]) -> set[int]:
    found: set[int] = set()
    for d in dirs:
        with contextlib.suppress(FileNotFoundError):
            found.update(int(p) for p in (d / "cgroup.procs").read_text().split())
    return found
