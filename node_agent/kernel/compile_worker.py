"""Compiles and loads one program in a short-lived, sandboxed process, and hands its fds over.

Run by the agent (compile_runner) as `python -m node_agent.kernel.compile_worker --socket-fd N
[--no-sandbox]` (for bytecode through worker_boot, without site) with a JSON request on stdin. BCC brings LLVM
into the process (~120 MB) and the source is hostile, so the long-lived agent never compiles itself: this
worker enters the sandbox (sandbox.py), builds the program (bcc_build; or, for a request with "bytecode",
loads the ELF with libbpf: bytecode_build, and bcc is never loaded), and sends one message on the socket:
JSON {ok, reason, message, progs, maps} with the program and map fds by SCM_RIGHTS. When the request names
`previousMaps`, the agent has sent the previous version's maps on the same socket first (JSON [[name,
layout], ...] and their fds), for the build to take over (map_reuse). It never touches bpffs; the agent
checks and pins the fds. --no-sandbox exists only so the benchmark can measure what the sandbox costs.

A spare bytecode worker (worker_spares) is started with `--prepared JSON`: the request's sandbox
fields (REQUEST_FIELDS in sandbox.py), known before the request. It enters the sandbox first, reads
the request inside, and refuses one whose fields differ.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import sys
from typing import Any

from node_agent.errors import SandboxError
from node_agent.kernel import compile_guard, sandbox
from node_agent.kernel.built import BuildFailure, BuiltProgram

# The node's BTF, for CO-RE relocations: opened before the sandbox, which shows nothing of /sys, and
# read inside through the worker's own /proc (bytecode_build's btfPath).
VMLINUX_BTF = "/sys/kernel/btf/vmlinux"

# The agent keeps 2 KiB of a message; the head holds the first diagnostics, and it must fit one
# datagram.
MAX_MESSAGE_CHARS = 32 << 10


def _reply(request: dict[str, Any], channel_fd: int) -> tuple[dict[str, Any], list[int]]:
    previous = _previous_maps(request, channel_fd)
    try:
        built = _build(request, previous)
    except BuildFailure as e:
        return {"ok": False, "reason": e.reason, "message": e.message}, []
    finally:
        for _layout, fd in previous.values():
            os.close(fd)  # built's maps are dups where they were taken over
    roles, names = sorted(built.progs), sorted(built.maps)
    fds = [built.progs[r] for r in roles] + [built.maps[n] for n in names]
    return {"ok": True, "progs": roles, "maps": names, "layouts": built.layouts}, fds


def _build(request: dict[str, Any], previous: dict[str, tuple[str, int]]) -> BuiltProgram:
    if "bytecode" in request:
        from node_agent.kernel import bytecode_build

        return bytecode_build.build(request, previous)
    from node_agent.kernel import bcc_build

    return bcc_build.build(request, previous)


def _shown(request: dict[str, Any]) -> list[str]:
    """What the sandbox shows besides the runtime: the include directories; for a cluster admin's
    bytecode also the kernel's BTF at its own path, where libbpf resolves `__ksym` externs and kfuncs
    (a tenant's may have none, and its CO-RE goes through the fd of _open_btf alone)."""
    shown = [str(d) for d in request.get("includeDirs", ())]
    if "bytecode" in request and request.get("cluster"):
        shown.append(VMLINUX_BTF)
    return shown


def _open_btf() -> str:
    """For bytecode: the node's BTF as an fd the sandbox keeps, named by a path it can open."""
    try:
        fd = os.open(VMLINUX_BTF, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as e:
        raise BuildFailure(
            "UnsupportedOnNode", f"this node has no kernel BTF ({VMLINUX_BTF}: {e.strerror})"
        ) from None
    return f"/proc/self/fd/{fd}"


def _enter(settings: dict[str, Any], socket_fd: int, no_sandbox: bool) -> dict[str, Any]:
    """Enters the sandbox `settings` (a request, or a spare's prepared fields) ask for; returns
    what the build needs of it beside the request (the BTF's path)."""
    extra = {}
    if "bytecode" in settings:
        extra["btfPath"] = _open_btf()
        from node_agent.kernel.libbpf import LIBRARY as library
    else:
        # What bcc_build imports of the project, loaded before the sandbox as it always was.
        from node_agent.kernel import stderr_capture, syscalls  # noqa: F401

        library = sandbox.BCC_LIBRARY
    if not no_sandbox:
        keep = _capabilities(settings)
        sandbox.enter(
            _shown(settings), _limits(settings), close_outside=(socket_fd,), keep=keep, library=library
        )
        _guard_worker()
    return extra


def _prepared_request(prepared: dict[str, Any], socket_fd: int, no_sandbox: bool) -> dict[str, Any]:
    """A spare's request, read inside the sandbox it entered before; its sandbox fields must be
    those it was prepared with."""
    failure: Exception | None = None
    try:
        extra = _enter({**prepared, "bytecode": True}, socket_fd, no_sandbox)
    except (SandboxError, BuildFailure) as e:
        extra, failure = {}, e  # said in the reply to the request, as any worker would
    request = json.load(sys.stdin)
    if failure is not None:
        raise failure
    if "bytecode" not in request or any(request.get(f) != prepared.get(f) for f in sandbox.REQUEST_FIELDS):
        raise SandboxError("the request does not match the sandbox this worker was prepared with")
    return {**request, **extra}


def _previous_maps(request: dict[str, Any], channel_fd: int) -> dict[str, tuple[str, int]]:
    """The previous version's maps the agent sent before the request: name -> (layout, fd)."""
    if not request.get("previousMaps"):
        return {}
    try:
        with socket.socket(fileno=os.dup(channel_fd)) as channel:
            # Already queued: the agent sends them before it writes the request.
            message, fds, _flags, _ = socket.recv_fds(channel, 1 << 16, 64, socket.MSG_DONTWAIT)
    except OSError as e:
        raise SandboxError(f"the previous version's maps did not arrive: {e}") from None
    try:
        entries = json.loads(message)
        if len(entries) != len(fds):
            raise ValueError(f"{len(fds)} fds for {len(entries)} maps")
        return {str(name): (str(layout), fd) for (name, layout), fd in zip(entries, fds, strict=True)}
    except (ValueError, TypeError) as e:
        for fd in fds:
            os.close(fd)
        raise SandboxError(f"the previous version's maps came garbled: {e}") from None


def _limits(request: dict[str, Any]) -> sandbox.SandboxLimits:
    limits = request.get("limits", {})
    defaults = sandbox.SandboxLimits()
    return sandbox.SandboxLimits(
        cpu_seconds=int(limits.get("cpuSeconds", defaults.cpu_seconds)),
        memory_bytes=int(limits.get("memoryBytes", defaults.memory_bytes)),
        memory_cgroup=bool(limits.get("memoryCgroup", False)),
        file_bytes=int(limits.get("fileBytes", defaults.file_bytes)),
    )


def _capabilities(request: dict[str, Any]) -> frozenset[int]:
    """What the compile keeps; a request that does not say gets nothing beyond the network set."""
    privilege = str(request.get("privilege", ""))
    if privilege not in sandbox.CAPABILITIES_BY_PRIVILEGE:
        raise SandboxError(f"the request names no known privilege ({privilege!r})")
    return sandbox.CAPABILITIES_BY_PRIVILEGE[privilege]


def _guard_worker() -> None:
    """The compile guard on the whole worker, not only on its compile thread."""
    try:
        compile_guard.guard_this_thread()
    except compile_guard.GuardUnavailable as e:
        raise SandboxError(f"the compile guard: {e}") from e


def warm_bytecode() -> None:
    """Loads what every bytecode build loads, before the request is read: a spare worker
    (worker_spares) waits with this done. Our own modules and libbpf only; no byte of the request."""
    from node_agent.kernel import bytecode_build, libbpf, sandbox_root  # noqa: F401

    with contextlib.suppress(libbpf.LibbpfError):  # the build says it, in its reply
        libbpf.lib()
    sandbox_root.python_trees()  # sysconfig's data, read for the sandbox's root


def _arguments(argv: list[str]) -> tuple[int, bool, dict[str, Any] | None]:
    """(--socket-fd, --no-sandbox, --prepared): without argparse's import (~6 ms of each start)."""
    try:
        socket_fd = int(argv[argv.index("--socket-fd") + 1])
        prepared = json.loads(argv[argv.index("--prepared") + 1]) if "--prepared" in argv else None
    except (ValueError, IndexError):
        sys.exit("usage: compile_worker --socket-fd N [--no-sandbox] [--prepared JSON]")
    return socket_fd, "--no-sandbox" in argv, prepared


def main(argv: list[str] | None = None) -> None:
    socket_fd, no_sandbox, prepared = _arguments(sys.argv[1:] if argv is None else argv)
    # BCC and clang may write to stdout; the agent collects both streams as the worker's log.
    os.dup2(2, 1)
    try:
        if prepared is not None:
            request = _prepared_request(prepared, socket_fd, no_sandbox)
        else:
            request = json.load(sys.stdin)
            request.update(_enter(request, socket_fd, no_sandbox))
        reply, fds = _reply(request, socket_fd)
    except SandboxError as e:
        reply, fds = {"ok": False, "reason": e.reason, "message": f"the compile sandbox failed: {e}"}, []
    except BuildFailure as e:
        reply, fds = {"ok": False, "reason": e.reason, "message": e.message}, []
    message = str(reply.get("message", ""))
    # The verifier explains a rejection in its last lines, the compiler in its first.
    keep_end = reply.get("reason") == "VerifierRejected" and len(message) > MAX_MESSAGE_CHARS
    reply["message"] = "…" + message[-MAX_MESSAGE_CHARS:] if keep_end else message[:MAX_MESSAGE_CHARS]
    with socket.socket(fileno=socket_fd) as channel:
        socket.send_fds(channel, [json.dumps(reply).encode()], fds)
    # Done: the agent has the fds and waits for this exit. The interpreter's teardown (modules, LLVM
    # or libbpf objects) would add tens of milliseconds to every build and change nothing.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    main()
