"""Runs BCC's compile in a thread that cannot reach anything outside the program being built.

BCC's BPF() constructor does more than compile: a table with a pin path opens that pin
(bpf(BPF_OBJ_GET)), creates its parent directory and pins a new map there, and functions with
magic names get attached. Whatever a hostile source spells, the compile thread runs under a seccomp
filter that lets bpf(2) create maps, load programs and BTF, and nothing else: opening or pinning
objects, opening objects by id, attaching, perf events and mkdir fail with EPERM. The filter is the
thread's own (seccomp filters are per thread unless synchronised), so the rest of the worker is
untouched, and it goes with the thread.
"""

from __future__ import annotations

import ctypes
import errno
import platform
import struct
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from node_agent.kernel import libc as libc_handle

T = TypeVar("T")

# bpf(2) commands a compile needs: maps (created and filled by BCC), program and BTF loads
# (libbpf's feature probes load small programs), and reading back what was created.
_ALLOWED_BPF_CMDS = (
    0,  # BPF_MAP_CREATE
    1,  # BPF_MAP_LOOKUP_ELEM
    2,  # BPF_MAP_UPDATE_ELEM
    3,  # BPF_MAP_DELETE_ELEM
    4,  # BPF_MAP_GET_NEXT_KEY
    5,  # BPF_PROG_LOAD
    15,  # BPF_OBJ_GET_INFO_BY_FD
    18,  # BPF_BTF_LOAD
    22,  # BPF_MAP_FREEZE
)


@dataclass(frozen=True)
class _Arch:
    audit_arch: int
    bpf: int
    denied: tuple[int, ...]  # perf_event_open, mkdir (where it exists), mkdirat
    syscall_bit: int = 0  # syscall numbers with this bit set belong to another ABI (x32)


_ARCHES = {
    "x86_64": _Arch(0xC000003E, 321, (298, 83, 258), syscall_bit=0x40000000),
    "aarch64": _Arch(0xC00000B7, 280, (241, 34)),
    "riscv64": _Arch(0xC00000F3, 280, (241, 34)),
}

_PR_SET_NO_NEW_PRIVS = 38
_PR_SET_SECCOMP = 22
_SECCOMP_MODE_FILTER = 2
_SECCOMP_RET_ALLOW = 0x7FFF0000
_SECCOMP_RET_ERRNO = 0x00050000
# struct seccomp_data: int nr; __u32 arch; __u64 instruction_pointer; __u64 args[6]
_OFF_NR, _OFF_ARCH, _OFF_ARG0 = 0, 4, 16  # args[0]'s low half on little-endian machines
# classic BPF opcodes
_LD_W_ABS = 0x20
_JEQ_K = 0x15
_JGE_K = 0x35
_RET_K = 0x06


class GuardUnavailable(RuntimeError):
    """The filter cannot be installed here; compiling unguarded is not an option."""


def _insn(code: int, k: int, jt: int = 0, jf: int = 0) -> bytes:
    return struct.pack("=HBBI", code, jt, jf, k)


def filter_program(arch: _Arch) -> bytes:
    """The classic BPF program of the filter, as struct sock_filter[]."""
    deny = _SECCOMP_RET_ERRNO | errno.EPERM
    allow_cmds = len(_ALLOWED_BPF_CMDS)
    prog = [
        _insn(_LD_W_ABS, _OFF_ARCH),
        _insn(_JEQ_K, arch.audit_arch, jt=1),
        _insn(_RET_K, deny),  # another ABI of the machine: nothing we vetted
        _insn(_LD_W_ABS, _OFF_NR),
    ]
    if arch.syscall_bit:
        prog += [_insn(_JGE_K, arch.syscall_bit, jf=1), _insn(_RET_K, deny)]
    for nr in arch.denied:
        prog += [_insn(_JEQ_K, nr, jf=1), _insn(_RET_K, deny)]
    # Not bpf(2): allowed. bpf(2): only the commands above.
    prog += [_insn(_JEQ_K, arch.bpf, jt=1), _insn(_RET_K, _SECCOMP_RET_ALLOW), _insn(_LD_W_ABS, _OFF_ARG0)]
    for i, cmd in enumerate(_ALLOWED_BPF_CMDS):
        prog.append(_insn(_JEQ_K, cmd, jt=allow_cmds - i))
    prog += [_insn(_RET_K, deny), _insn(_RET_K, _SECCOMP_RET_ALLOW)]
    return b"".join(prog)


def _install() -> None:
    arch = _ARCHES.get(platform.machine())
    if arch is None:
        raise GuardUnavailable(f"the compile guard does not know the syscalls of {platform.machine()}")
    libc = libc_handle.load()
    code = filter_program(arch)
    insns = ctypes.create_string_buffer(code, len(code))
    fprog = struct.pack("=HxxxxxxQ", len(code) // 8, ctypes.addressof(insns))
    fprog_buf = ctypes.create_string_buffer(fprog, len(fprog))
    # No new privileges is what lets a thread without CAP_SYS_ADMIN install a filter.
    if libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        raise GuardUnavailable(f"prctl(PR_SET_NO_NEW_PRIVS): {errno.errorcode.get(ctypes.get_errno())}")
    if libc.prctl(_PR_SET_SECCOMP, _SECCOMP_MODE_FILTER, fprog_buf, 0, 0) != 0:
        raise GuardUnavailable(f"prctl(PR_SET_SECCOMP): {errno.errorcode.get(ctypes.get_errno())}")


# Set once the worker's main thread is guarded: threads it starts inherit the filter.
_process_guarded = False


def guard_this_thread() -> None:
    """Puts the calling thread, and the threads it starts from now on, under the filter. The compile
    worker calls it on its main thread in the sandbox, so that code run by a hijacked compile thread
    through the main thread (they share memory) is held to the same filter."""
    global _process_guarded
    _install()
    _process_guarded = True


def run_guarded(fn: Callable[[], T]) -> T:
    """Runs fn in a new thread under the filter and returns its result (or raises its exception)."""
    outcome: dict[str, object] = {}

    def body() -> None:
        try:
            if not _process_guarded:  # else the thread inherits the filter: one is enough
                _install()
            outcome["value"] = fn()
        except BaseException as e:  # handed to the caller's thread
            outcome["error"] = e

    thread = threading.Thread(target=body, name="bpfleet-guarded-compile")
    thread.start()
    thread.join()
    if "error" in outcome:
        raise outcome["error"]  # type: ignore[misc]
    return outcome["value"]  # type: ignore[return-value]
