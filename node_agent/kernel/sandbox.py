"""The compile worker's sandbox: what a hostile source's compile can see and use.

A tenant's source is compiled by clang inside BCC. `#include` reads any file the compiler can see
and puts its text in the diagnostics, BCC's pinned tables open or create pins by path, and a source
can make clang eat CPU and memory. So the worker enters this sandbox before it imports bcc:

- new mount, PID, network, IPC and UTS namespaces; the compile runs as PID 1 of the new PID
  namespace, and dies with the worker;
- a root of read-only binds of only what the compile needs (sandbox_root), then pivot_root;
- rlimits: CPU seconds, file size, data size, open files, no core dumps (the agent adds a cgroup);
- every capability dropped but what loading the program needs (CAPABILITIES_BY_PRIVILEGE);
  no_new_privs; a seccomp filter refusing mounts, namespaces and the like.

A step that fails raises SandboxError: the compile fails with what is missing, never runs
unsandboxed.
"""

from __future__ import annotations

import ctypes
import os
import resource
import select
import signal
import socket
import sys
from dataclasses import dataclass
from typing import NoReturn

from node_agent.errors import SandboxError
from node_agent.kernel import sandbox_root
from node_agent.kernel.sandbox_sys import (
    CAP_BPF,
    CAP_NET_ADMIN,
    CAP_PERFMON,
    CAP_SYS_ADMIN,
    CLONE_NEWIPC,
    CLONE_NEWNET,
    CLONE_NEWNS,
    CLONE_NEWPID,
    CLONE_NEWUTS,
    MS_PRIVATE,
    MS_REC,
    deny_syscalls,
    die_with_parent,
    keep_only_capabilities,
    mount,
    set_no_new_privs,
    unshare,
)

# The exit codes of a worker whose compile was stopped at its CPU time or memory limit.
CPU_LIMIT_EXIT = 90
MEMORY_LIMIT_EXIT = 91
# A compile that died of a signal having used this share of its memory limit ran out of memory:
# clang does not always survive a failed allocation to say so (under RLIMIT_DATA its peak RSS
# reaches 75-80 % of the limit; a cgroup OOM kill, which the agent also sees, reaches ~100 %).
_NEAR_MEMORY_LIMIT = 0.6
BCC_LIBRARY = "libbcc.so.0"
KEPT_CAPABILITIES = frozenset({CAP_BPF, CAP_PERFMON, CAP_NET_ADMIN, CAP_SYS_ADMIN})
# What a compile keeps, by what it builds. A tenant's compile holds no CAP_SYS_ADMIN, so it cannot
# open other programs or maps by id. Its cgroup and network programs load without CAP_PERFMON (or
# CAP_SYS_ADMIN, which implies it): the verifier then forbids leaking kernel pointers into maps and
# keeps its Spectre mitigations, as for any unprivileged loader. Tracing types need CAP_PERFMON.
CAPABILITIES_BY_PRIVILEGE = {
    "cluster": KEPT_CAPABILITIES,
    "tracing": frozenset({CAP_BPF, CAP_PERFMON}),
    "network": frozenset({CAP_BPF, CAP_NET_ADMIN}),
}
HOSTNAME = "bpfleet-compile"


@dataclass(frozen=True)
class SandboxLimits:
    cpu_seconds: int = 60
    # RLIMIT_DATA: the memory bound where no cgroup gives one, a backstop (twice) where one does.
    memory_bytes: int = 1 << 30
    memory_cgroup: bool = False
    file_bytes: int = 64 << 20  # RLIMIT_FSIZE, and the size of /tmp
    open_files: int = 1024


# The fields of a bytecode build's request that decide its sandbox (capabilities, what it shows,
# its limits): a spare worker, prepared with them, enters it before its request comes.
REQUEST_FIELDS = ("privilege", "cluster", "limits")


def enter(
    include_dirs: list[str],
    limits: SandboxLimits,
    close_outside: tuple[int, ...] = (),
    keep: frozenset[int] = KEPT_CAPABILITIES,
    library: str = BCC_LIBRARY,
) -> None:
    """Moves this process's further work into the sandbox.

    Returns in the sandboxed process. The calling process stays outside: it closes `close_outside`,
    waits for the sandboxed one and exits with its status (CPU_LIMIT_EXIT or MEMORY_LIMIT_EXIT when
    a limit stopped it). Must be called while the process has a single thread. `library`: what the
    build loads (BCC's, or libbpf for bytecode), loaded here so that the root shows its directories.
    """
    try:
        ctypes.CDLL(library)  # BCC's maps LLVM and clang, whose directories the root must show
    except OSError as e:
        raise SandboxError(f"the library {library} cannot be loaded: {e}") from e
    root = sandbox_root.plan(sandbox_root.needed_paths(include_dirs))
    new_root = sandbox_root.mountpoint(root)
    unshare(CLONE_NEWPID)
    alive_read, alive_write = os.pipe()  # EOF on it tells the child its parent is gone
    pid = os.fork()
    if pid:
        os.close(alive_read)
        for fd in close_outside:
            os.close(fd)
        _wait_and_exit(pid, limits)
    os.close(alive_write)
    die_with_parent(signal.SIGKILL)
    if select.select([alive_read], [], [], 0)[0]:
        os._exit(1)  # the parent died before the death signal was armed
    os.close(alive_read)
    unshare(CLONE_NEWNS | CLONE_NEWNET | CLONE_NEWIPC | CLONE_NEWUTS)
    mount(None, "/", None, MS_REC | MS_PRIVATE)  # nothing done here propagates to the host
    sandbox_root.build(new_root, root, limits.file_bytes)
    sandbox_root.enter(new_root)
    socket.sethostname(HOSTNAME)
    _set_limits(limits)
    keep_only_capabilities(keep)
    set_no_new_privs()
    deny_syscalls()


def _set_limits(limits: SandboxLimits) -> None:
    data = limits.memory_bytes * (2 if limits.memory_cgroup else 1)
    for name, value in (
        ("RLIMIT_CPU", limits.cpu_seconds),
        ("RLIMIT_FSIZE", limits.file_bytes),
        ("RLIMIT_DATA", data),
        ("RLIMIT_NOFILE", limits.open_files),
        ("RLIMIT_CORE", 0),
    ):
        try:
            # Soft = hard: at the CPU limit the kernel sends SIGKILL, which PID 1 cannot ignore.
            resource.setrlimit(getattr(resource, name), (value, value))
        except (OSError, ValueError) as e:
            raise SandboxError(f"setting {name}: {e}") from e


def _wait_and_exit(pid: int, limits: SandboxLimits) -> NoReturn:
    _, status, usage = os.wait4(pid, 0)
    cpu = usage.ru_utime + usage.ru_stime
    rss = usage.ru_maxrss * 1024
    code = os.waitstatus_to_exitcode(status)
    if code < 0:
        sig = signal.Signals(-code)
        if sig in (signal.SIGKILL, signal.SIGXCPU) and cpu >= limits.cpu_seconds - 0.5:
            print(f"the compile was stopped at its CPU time limit ({cpu:.1f} s)", file=sys.stderr)
            code = CPU_LIMIT_EXIT
        elif rss >= _NEAR_MEMORY_LIMIT * limits.memory_bytes:
            print(f"the compile died of {sig.name} at its memory limit ({rss >> 20} MiB)", file=sys.stderr)
            code = MEMORY_LIMIT_EXIT
        else:
            print(f"the compile process was killed by {sig.name} after {cpu:.1f} s of CPU", file=sys.stderr)
            code = 128 + sig.value
    sys.stderr.flush()
    os._exit(code)
