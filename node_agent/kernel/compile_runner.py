"""The agent's side of a compile: runs one worker and takes the loaded program's fds from it.

The worker (compile_worker) gets its request on stdin and one end of an AF_UNIX SOCK_SEQPACKET
socketpair. It answers with one message: JSON {ok, reason, message, progs: [roles], maps: [names]}
and the fds of those programs then maps by SCM_RIGHTS, plus `layouts` ({map name: digest},
map_reuse). Before the request, the agent may send the previous version's maps the other way, for
the build to take over. The worker never touches bpffs: the agent
checks and pins what it receives. Everything the worker sends is treated as hostile (a compiler
exploit runs there): roles and names must be plain, every fd must be a BPF program or map of that
name, and every received fd is closed whatever happens.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import json
import os
import re
import select
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import IO, Any

from node_agent import errors, fault_points
from node_agent.kernel import map_reuse, syscalls
from node_agent.kernel.compile_cgroup import CgroupPlacement, CompileCgroup, CompileLimits
from node_agent.kernel.sandbox import CPU_LIMIT_EXIT, MEMORY_LIMIT_EXIT, REQUEST_FIELDS
from node_agent.kernel.worker_spares import SPARES, SpareKey, Started, start

WORKER_MODULE = "node_agent.kernel.compile_worker"
WORKER_BOOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "worker_boot.py")
_MAX_MESSAGE = 1 << 20
_MAX_FDS = 64
_ROLE = re.compile(r"[a-z][a-z0-9_]{0,31}")
_MAP_NAME = re.compile(r"[A-Za-z0-9_]{1,15}")  # BPF_OBJ_NAME_LEN less the NUL; no dots
_STDERR_LINES = 20
_TAIL_BYTES = 64 << 10


@dataclass
class Received:
    """A worker's loaded program: fds owned by the agent until close()."""

    progs: dict[str, int] = field(default_factory=dict)  # role -> program fd
    maps: dict[str, int] = field(default_factory=dict)  # map name -> fd
    layouts: dict[str, str] = field(default_factory=dict)  # map name -> layout digest

    def close(self) -> None:
        for fd in [*self.progs.values(), *self.maps.values()]:
            with contextlib.suppress(OSError):
                os.close(fd)
        self.progs.clear()
        self.maps.clear()


@dataclass(frozen=True)
class WorkerSettings:
    python: str
    timeout: float
    sandbox: bool
    limits: CompileLimits


@functools.cache
def package_locations() -> tuple[str, ...]:
    """`name=directory` of the worker's own packages, as worker_boot takes them."""
    found: list[str] = []
    for name in ("node_agent", "bpfleet_api"):
        spec = importlib.util.find_spec(name)
        if spec is None or not spec.submodule_search_locations:
            raise errors.CompileError(f"the package {name} of the compile worker is not installed")
        found.append(f"{name}={next(iter(spec.submodule_search_locations))}")
    return tuple(found)


def worker_argv(python: str, bytecode: bool, socket_fd: int, sandbox: bool) -> list[str]:
    # Bytecode's worker starts without site (worker_boot): BCC's needs bcc from site directories.
    start = [python, "-I", "-S", WORKER_BOOT, *package_locations(), "--"] if bytecode else []
    argv = start or [python, "-m", WORKER_MODULE]
    return [*argv, "--socket-fd", str(socket_fd), *([] if sandbox else ["--no-sandbox"])]


def worker_env() -> dict[str, str]:
    # The compile can read its own /proc/1/environ: give it nothing of the agent's environment.
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8", "PYTHONDONTWRITEBYTECODE": "1"}
    if os.environ.get("PYTHONPATH"):
        env["PYTHONPATH"] = os.environ["PYTHONPATH"]
    return env


@contextlib.contextmanager
def compiled(
    request: dict[str, Any],
    settings: WorkerSettings,
    cgroups: CgroupPlacement | None,
    carried: map_reuse.Carried | None = None,
) -> Iterator[Received]:
    """Runs a worker for `request`; yields what it loaded and closes those fds after the block.
    `carried`: the previous version's maps, handed to the worker (the fds stay the caller's).
    Raises a ProgramBuildError for the user when the worker refused, failed, crashed or timed out."""
    request = {**request, "limits": _limits_field(settings.limits, memory_cgroup=cgroups is not None)}
    previous = carried.maps if carried is not None else {}
    request["previousMaps"] = sorted(previous)
    received = _run(request, settings, cgroups, previous)
    try:
        yield received
    finally:
        received.close()


def _limits_field(limits: CompileLimits, *, memory_cgroup: bool) -> dict[str, Any]:
    return {
        "cpuSeconds": limits.cpu_seconds,
        "memoryBytes": limits.memory_bytes,
        "memoryCgroup": memory_cgroup,
        "fileBytes": limits.file_bytes,
    }


def _run(
    request: dict[str, Any],
    settings: WorkerSettings,
    cgroups: CgroupPlacement | None,
    previous: dict[str, tuple[str, int]],
) -> Received:
    bytecode = "bytecode" in request
    prepared = {f: request.get(f) for f in REQUEST_FIELDS}
    key = spare_key(settings, cgroups, prepared)
    worker = (SPARES.take(key) if bytecode else None) or _start(settings, bytecode, cgroups)
    answered = False
    try:
        if previous:
            # Queued before the request: the worker reads them once it has it.
            names = sorted(previous)
            entries = json.dumps([[name, previous[name][0]] for name in names]).encode()
            socket.send_fds(worker.ours, [entries], [previous[name][1] for name in names])
        reply, timed_out = _talk(worker, request, settings)
        if reply is not None and reply[0]:
            answered = True
            return _decode(*reply)
        if reply is not None:
            _close_all(reply[1])
        _stop(worker, 0.0 if timed_out else _EXIT_GRACE_SECONDS)  # its exit code says why
        raise _failure(worker.proc.returncode, timed_out, settings, worker.cgroup, worker.output)
    finally:
        if answered:
            # Its exit and its cgroup's removal take milliseconds the build need not wait for.
            reap_in_background(worker)
        else:
            _stop(worker)
            worker.close()
        if bytecode:  # the next bytecode build's worker (worker_spares), started off this one's path
            # In the sandbox this build had: the next one most likely asks for the same.
            SPARES.replenish(
                key, lambda: _start(settings, True, cgroups, prepared), after=SPARE_AFTER_SECONDS
            )


# A new interpreter's start is tens of milliseconds of CPU: not while the build just done is being
# attached and reported (on a node of two cores, that would be half of it).
SPARE_AFTER_SECONDS = 0.3


def spare_key(
    settings: WorkerSettings, cgroups: CgroupPlacement | None, prepared: dict[str, Any]
) -> SpareKey:
    """What a spare is started with: a build takes only a spare started as it would start one, in
    the sandbox its request asks for."""
    return (settings.python, settings.sandbox, settings.limits, cgroups, json.dumps(prepared, sort_keys=True))


def _start(
    settings: WorkerSettings,
    bytecode: bool,
    cgroups: CgroupPlacement | None,
    prepared: dict[str, Any] | None = None,
) -> Started:
    """A worker, in its own compile cgroup when the host has them: it joins before it has a request,
    so that everything it does, reading the request included, is bounded. `prepared`: a spare's
    sandbox fields, which it enters before its request comes (compile_worker)."""

    def argv(fd: int) -> list[str]:
        args = worker_argv(settings.python, bytecode, fd, settings.sandbox)
        return args if prepared is None else [*args, "--prepared", json.dumps(prepared)]

    worker = start(argv, worker_env())
    if cgroups is not None:
        try:
            worker.cgroup = cgroups.create(settings.limits)
            worker.cgroup.add(worker.proc.pid)
        except BaseException:
            worker.close()
            raise
    return worker


def prime_bytecode(settings: WorkerSettings, cgroups: CgroupPlacement | None) -> None:
    """Starts a spare bytecode worker now, so that the agent's first bytecode build has one too."""
    prepared = {
        "privilege": "network",  # a tenant's program on its pods' traffic: the usual first build
        "cluster": False,
        "limits": _limits_field(settings.limits, memory_cgroup=cgroups is not None),
    }
    SPARES.replenish(
        spare_key(settings, cgroups, prepared), lambda: _start(settings, True, cgroups, prepared)
    )


def _talk(
    worker: Started, request: dict[str, Any], settings: WorkerSettings
) -> tuple[tuple[bytes, list[int]] | None, bool]:
    """Writes the request and waits for the reply: (the reply or None, whether it timed out)."""
    deadline = time.monotonic() + settings.timeout
    proc = worker.proc
    assert proc.stdin is not None
    with contextlib.suppress(BrokenPipeError):  # a worker that died early: its exit says why
        proc.stdin.write(json.dumps(request).encode())
    with contextlib.suppress(BrokenPipeError):
        proc.stdin.close()
    fault_points.reached("compile")
    reply = _receive(worker.ours, deadline)
    return reply, reply is None and time.monotonic() >= deadline


def _stop(worker: Started, grace: float = 0.0) -> None:
    """Waits `grace` seconds for the worker to exit, then kills it: the sandboxed processes first,
    which the worker reaps before it exits, leaving no orphan."""
    proc = worker.proc
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(grace)
    if proc.poll() is None:
        if worker.cgroup is not None:
            worker.cgroup.kill(spare=proc.pid)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(1.0)
        proc.kill()
    proc.wait()


# A worker that answered exits at once (compile_worker ends with os._exit); one that lingers (a
# compromised one, say) is killed after this.
_EXIT_GRACE_SECONDS = 5.0


def reap_in_background(worker: Started) -> None:
    """Our ends of its socket and output are closed now; its exit and its cgroup are seen to later."""
    worker.ours.close()
    worker.output.close()

    def reap() -> None:
        _stop(worker, _EXIT_GRACE_SECONDS)
        worker.close()

    threading.Thread(target=reap, name="compile-reaper", daemon=True).start()


def _receive(ours: socket.socket, deadline: float) -> tuple[bytes, list[int]] | None:
    """The worker's one message and its fds; None on timeout. An empty message means the worker
    went away without answering."""
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return None
        if select.select([ours], [], [], remaining)[0]:
            break
    message, fds, flags, _ = socket.recv_fds(ours, _MAX_MESSAGE, _MAX_FDS, socket.MSG_CMSG_CLOEXEC)
    if flags & (socket.MSG_TRUNC | socket.MSG_CTRUNC):
        _close_all(fds)
        raise errors.CompileError("the compile worker sent an oversized result")
    return message, fds


def _close_all(fds: list[int]) -> None:
    for fd in fds:
        with contextlib.suppress(OSError):
            os.close(fd)


def _decode(message: bytes, fds: list[int]) -> Received:
    received = Received()
    try:
        try:
            reply = json.loads(message)
            ok, roles, names = reply["ok"], list(reply.get("progs", [])), list(reply.get("maps", []))
            layouts = dict(reply.get("layouts", {}))
        except (ValueError, KeyError, TypeError) as e:
            raise errors.CompileError(f"the compile worker sent an unreadable result: {e}") from None
        if not ok:
            error = errors.BUILD_ERRORS.get(str(reply.get("reason")), errors.CompileError)
            raise error(str(reply.get("message", "")))
        _check_shape(roles, names, fds)
        _check_layouts(layouts, names)
        received.layouts = layouts
        received.progs = dict(zip(roles, fds[: len(roles)], strict=True))
        received.maps = dict(zip(names, fds[len(roles) :], strict=True))
        fds = []  # owned by `received` from here
        _check_objects(received)
    except BaseException:
        received.close()
        _close_all(fds)
        raise
    return received


def _check_shape(roles: list[Any], names: list[Any], fds: list[int]) -> None:
    def bad(what: str) -> errors.CompileError:
        return errors.CompileError(f"the compile worker sent an invalid result: {what}")

    if len(fds) != len(roles) + len(names):
        raise bad(f"{len(fds)} fds for {len(roles)} programs and {len(names)} maps")
    if "prog" not in roles or len(set(roles)) != len(roles) or len(set(names)) != len(names):
        raise bad("the program roles or map names are missing or repeated")
    for role in roles:
        if not isinstance(role, str) or not _ROLE.fullmatch(role):
            raise bad(f"program role {role!r}")
    for name in names:
        if not isinstance(name, str) or not _MAP_NAME.fullmatch(name):
            raise bad(f"map name {name!r}")


def _check_layouts(layouts: dict[Any, Any], names: list[str]) -> None:
    for name, layout in layouts.items():
        if name not in names or not map_reuse.is_digest(layout):
            raise errors.CompileError(f"the compile worker sent an invalid result: layout of {name!r}")


def _kind(fd: int) -> str:
    try:
        return os.readlink(f"/proc/self/fd/{fd}")  # e.g. anon_inode:bpf-prog
    except OSError:
        return ""


def _check_objects(received: Received) -> None:
    """Each fd must be what the worker says: a BPF program, or the BPF map of that name."""
    kinds = [(fd, "anon_inode:bpf-prog") for fd in received.progs.values()]
    kinds += [(fd, "anon_inode:bpf-map") for fd in received.maps.values()]
    for fd, kind in kinds:
        if _kind(fd) != kind:
            raise errors.CompileError(f"the compile worker sent an fd that is not a {kind[11:]}")
    try:
        for name, fd in received.maps.items():
            if syscalls.map_info(fd).name != name:
                raise errors.CompileError(f"the compile worker sent a map that is not {name!r}")
    except errors.KernelError as e:
        raise errors.CompileError(f"the compile worker sent an fd that is not a BPF object: {e}") from None


def _failure(
    code: int, timed_out: bool, settings: WorkerSettings, cgroup: CompileCgroup | None, output: IO[bytes]
) -> errors.CompileError:
    limits = settings.limits
    output.seek(max(0, output.seek(0, os.SEEK_END) - _TAIL_BYTES))
    text = output.read().decode(errors="replace")
    if timed_out:
        return errors.CompileError(f"the compiler took longer than {settings.timeout:.0f}s")
    # From the exit code and the cgroup only: the output quotes the tenant's own source lines.
    out_of_memory = code == MEMORY_LIMIT_EXIT
    if out_of_memory or (cgroup is not None and cgroup.oom_killed()):
        return errors.CompileError(f"the compiler hit the memory limit ({limits.memory_bytes >> 20} MiB)")
    if code == CPU_LIMIT_EXIT:
        return errors.CompileError(f"the compiler hit the CPU time limit ({limits.cpu_seconds} s)")
    # The worker crashed (a compiler fault on a hostile source, say): the agent lives on.
    tail = text.strip().splitlines()[-_STDERR_LINES:]
    return errors.CompileError(f"the compile worker exited with code {code}:\n" + "\n".join(tail))
