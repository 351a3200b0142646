"""Compiling a version into pins: the sandboxed worker, the agent's own checks, then publishing.

The worker (compile_runner) hands back program and map fds; before anything is pinned the agent
checks them itself (map memory, helper calls), since a sandboxed process is not taken at its word,
and only then publishes the version directory whole (publish).
"""

from __future__ import annotations

import base64
import hashlib
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from node_agent import errors
from node_agent.kernel import bytecode_params, compile_runner, helper_check, map_memory, map_reuse, syscalls
from node_agent.kernel.attach_types import FILTERED_SCOPES, NODE_WIDE, TRACING_PROG_TYPES, KernelAttach
from node_agent.kernel.backend import ProgramBuild
from node_agent.kernel.compile_cgroup import PREFIX as CGROUP_PREFIX
from node_agent.kernel.compile_cgroup import CgroupPlacement, CompileLimits
from node_agent.kernel.publish import publish

log = logging.getLogger(__name__)

# The agent's prebuilt bytecode (`make bytecode`): the pod filter of bytecode programs for pods.
DEFAULT_BYTECODE_DIR = Path(__file__).resolve().parents[2] / "build" / "bytecode"
ENTRY_OBJECT = "bpfleet_entry.bpf.o"
# Before node-wide programs without a pod filter: bpfleet_pod_selected() is true for every task.
UNFILTERED_PRELUDE = "#include <bpfleet_unfiltered.h>"
DEFAULT_COMPILE_LIMITS = CompileLimits()
# A check of the loaded programs (role -> fd) before they are pinned; raises a ProgramBuildError.
CheckLoaded = Callable[[dict[str, int], ProgramBuild], None]


@dataclass(frozen=True)
class Loaded:
    """A version just published: its program id, its maps, and which of them are the previous
    version's maps (kept, contents and all) or replaced ones that start empty (reset)."""

    prog_id: int
    maps: tuple[str, ...]
    kept: tuple[str, ...] = ()
    reset: tuple[str, ...] = ()


@dataclass
class Loader:
    include_dirs: tuple[Path, ...]
    # Source text put before filtered programs: the enforced pod filter (bpf/include).
    node_wide_prelude: str
    python: str
    compile_timeout: float
    sandbox: bool = True
    compile_limits: CompileLimits = DEFAULT_COMPILE_LIMITS
    check_loaded: CheckLoaded | None = helper_check.check_loaded
    compile_cgroup_prefix: str = CGROUP_PREFIX
    compile_cgroups: bool = True  # False: rlimits only, as on a host without controllers
    bytecode_dir: Path = DEFAULT_BYTECODE_DIR  # the agent's own objects (--bytecode-dir)
    # The prefix is this process's alone (the agent's node_prefix): the cgroups found with it at
    # start are a dead predecessor's, killed and removed (compile_cgroup.take_over).
    compile_cgroups_owned: bool = False
    _cgroups: CgroupPlacement | None = field(default=None, init=False)
    _cgroups_looked_for: bool = field(default=False, init=False)

    def load(self, pin_dir: Path, build: ProgramBuild, previous_dir: Path | None = None) -> Loaded:
        """Builds `build` and publishes it at pin_dir, taking over the maps of the version at
        previous_dir (the same program's) whose layout is unchanged. Raises a ProgramBuildError for
        the user."""
        settings = self._settings()
        carried = map_reuse.carried_from(previous_dir)
        try:
            with compile_runner.compiled(
                self._request(build), settings, self.compile_cgroup_placement(), carried
            ) as received:
                # The same checks whatever was carried over: the cap counts every map used.
                check_program_maps(received.progs, received.maps, build)
                if self.check_loaded is not None:
                    self._check(received.progs, build)
                kept, reset = carried.kept_and_reset(received.maps)
                prog_id = publish(received, pin_dir, kept, reset)
                return Loaded(prog_id, tuple(sorted(received.maps)), kept, reset)
        finally:
            carried.close()

    def prime_bytecode(self) -> None:
        """Starts the first bytecode build's worker now (worker_spares), as a build would start it."""
        compile_runner.prime_bytecode(self._settings(), self.compile_cgroup_placement())

    def _settings(self) -> compile_runner.WorkerSettings:
        return compile_runner.WorkerSettings(
            self.python, self.compile_timeout, self.sandbox, self.compile_limits
        )

    def _request(self, build: ProgramBuild) -> dict[str, Any]:
        if build.bytecode is not None:
            return self._bytecode_request(build)
        return {
            "source": build.source,
            "function": build.function,
            "progType": build.attach.prog_type,
            "attachType": build.attach.load_attach_type,
            "includeDirs": [str(d) for d in self.include_dirs],
            "cflags": [f"-D{name}={value}" for name, value in build.defines],
            "prelude": self._prelude(build.attach),
            "entryPoint": build.attach.scope in FILTERED_SCOPES,
            "maxMapBytes": build.max_map_bytes,  # 0: the compile's default (64 MiB)
            "privilege": _privilege(build),  # which capabilities the compile keeps (sandbox.py)
        }

    def _bytecode_request(self, build: ProgramBuild) -> dict[str, Any]:
        """The worker loads the ELF with libbpf (bytecode_build); parameters set .rodata globals."""
        assert build.bytecode is not None
        data = build.bytecode.data
        if data is None:
            raise errors.CompileError("the bytecode was not fetched before its build (no ELF to load)")
        if build.bytecode.sha256 is not None and hashlib.sha256(data).hexdigest() != build.bytecode.sha256:
            raise errors.SourceHashMismatch(
                f"expected sha256 {build.bytecode.sha256}, got {hashlib.sha256(data).hexdigest()}"
            )
        request: dict[str, Any] = {
            "bytecode": base64.b64encode(data).decode(),
            "function": build.function,
            "progType": build.attach.prog_type,
            "attachType": build.attach.load_attach_type,
            "parameters": bytecode_params.from_defines(build.defines),
            "entryPoint": build.attach.scope in FILTERED_SCOPES,
            "maxMapBytes": build.max_map_bytes,
            "privilege": _privilege(build),
            "cluster": build.cluster,
        }
        if request["entryPoint"]:
            request["entryBytecode"] = base64.b64encode(self._entry_object()).decode()
        return request

    def _entry_object(self) -> bytes:
        path = self.bytecode_dir / ENTRY_OBJECT
        try:
            return path.read_bytes()
        except OSError as e:
            raise errors.CompileError(
                f"the agent's pod filter {path} cannot be read ({e.strerror}): build it with `make bytecode`"
            ) from None

    def _prelude(self, attach: KernelAttach) -> str:
        """Source text put before the user's: the enforced pod filter, or its node-wide stand-in."""
        if attach.scope in FILTERED_SCOPES:
            return self.node_wide_prelude
        if attach.scope == NODE_WIDE:
            return UNFILTERED_PRELUDE
        return ""

    def _check(self, progs: dict[str, int], build: ProgramBuild) -> None:
        """The loaded code as the kernel has it, before anything is pinned or attached."""
        assert self.check_loaded is not None
        try:
            self.check_loaded(dict(progs), build)
        except errors.ProgramBuildError:
            raise
        except errors.AgentError as e:
            # Fail closed: code whose calls cannot be read back is not run.
            raise errors.HelperNotAllowed(f"the agent could not check the program's helper calls: {e}") from e

    def compile_cgroup_placement(self) -> CgroupPlacement | None:
        """Where compile workers' cgroups go, looked for once (None: the host offers none)."""
        if self.sandbox and self.compile_cgroups and not self._cgroups_looked_for:
            self._cgroups_looked_for = True
            self._cgroups = CgroupPlacement.detect(self.compile_cgroup_prefix, self.compile_cgroups_owned)
            if self._cgroups is None:
                log.info("no memory cgroup for compile workers; their rlimits bound them")
        return self._cgroups


def _privilege(build: ProgramBuild) -> str:
    if build.cluster:
        return "cluster"
    return "tracing" if build.attach.prog_type in TRACING_PROG_TYPES else "network"


def check_program_maps(progs: dict[str, int], handed: dict[str, int], build: ProgramBuild) -> None:
    """The maps the received programs really use, as the kernel says (not as the worker says): each
    map handed over must be one of them, and together they must fit the build's cap. The worker
    checked too; the agent does not take a sandboxed process's word for it."""
    used = {map_id for fd in progs.values() for map_id in syscalls.prog_info(fd).map_ids}
    for name, fd in handed.items():
        if syscalls.map_info(fd).id not in used:
            raise errors.CompileError(f"the compile worker handed over map {name}, which no program uses")
    maps: dict[str, int] = {}
    try:
        for map_id in sorted(used):
            fd = syscalls.map_fd_by_id(map_id)
            maps[syscalls.map_info(fd).name or f"map-{map_id}"] = fd
        check_map_memory(maps, build)
    finally:
        for fd in maps.values():
            os.close(fd)


def check_map_memory(maps: dict[str, int], build: ProgramBuild) -> None:
    """Refuses maps whose kernel memory is over the build's cap (MapTooLarge)."""
    sizes = {name: map_memory.memlock(fd) for name, fd in maps.items()}
    too_large = map_memory.over_cap(sizes, map_memory.cap(build.max_map_bytes))
    if too_large:
        raise errors.MapTooLarge(too_large)
