"""The raw calls the compile sandbox is made of: namespaces, mounts, capabilities, seccomp.

Python 3.11 has no os.unshare and no wrappers for mount, pivot_root or capset, so they are called
through libc here. Every failure raises SandboxError naming the step, so a node that cannot build
the sandbox fails compiles with a message that says what is missing, never compiles unsandboxed.
"""

from __future__ import annotations

import ctypes
import os
import platform
import struct

from node_agent.errors import SandboxError
from node_agent.kernel import libc

CLONE_NEWNS = 0x00020000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000

MS_RDONLY = 1
MS_NOSUID = 2
MS_NODEV = 4
MS_NOEXEC = 8
MS_REMOUNT = 32
MS_BIND = 4096
MS_REC = 16384
MS_PRIVATE = 1 << 18
MNT_DETACH = 2

_PR_SET_PDEATHSIG = 1
_PR_SET_SECCOMP = 22
_PR_CAPBSET_DROP = 24
_PR_SET_NO_NEW_PRIVS = 38
_PR_CAP_AMBIENT = 47
_PR_CAP_AMBIENT_CLEAR_ALL = 4
_SECCOMP_MODE_FILTER = 2
_LINUX_CAPABILITY_VERSION_3 = 0x20080522

CAP_NET_ADMIN = 12
CAP_SYS_ADMIN = 21
CAP_PERFMON = 38
CAP_BPF = 39

# (x86_64, aarch64) syscall numbers; seccomp filters match on them.
_ARCH = {"x86_64": 0, "aarch64": 1}
_NR_PIVOT_ROOT = (155, 41)
_NR_CAPSET = (126, 91)
_AUDIT_ARCH = (0xC000003E, 0xC00000B7)
# What a compromised compiler could use to undo the sandbox or reach the host: mounts and
# namespaces (the read-only binds), module and kexec loading, other processes' memory, keyrings.
_DENIED = {
    "mount": (165, 40),
    "umount2": (166, 39),
    "pivot_root": (155, 41),
    "chroot": (161, 51),
    "unshare": (272, 97),
    "setns": (308, 268),
    "open_tree": (428, 428),
    "move_mount": (429, 429),
    "fsopen": (430, 430),
    "fsconfig": (431, 431),
    "fsmount": (432, 432),
    "fspick": (433, 433),
    "mount_setattr": (442, 442),
    "init_module": (175, 105),
    "finit_module": (313, 273),
    "delete_module": (176, 106),
    "kexec_load": (246, 104),
    "kexec_file_load": (320, 294),
    "reboot": (169, 142),
    "swapon": (167, 224),
    "swapoff": (168, 225),
    "ptrace": (101, 117),
    "process_vm_readv": (310, 270),
    "process_vm_writev": (311, 271),
    "keyctl": (250, 219),
    "add_key": (248, 217),
    "request_key": (249, 218),
    "name_to_handle_at": (303, 264),
    "open_by_handle_at": (304, 265),
    "userfaultfd": (323, 282),
}

_libc = libc.load()
_libc.syscall.restype = ctypes.c_long
_libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p]
_libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]
_libc.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]


def _arch() -> int:
    arch = _ARCH.get(platform.machine())
    if arch is None:
        raise SandboxError(f"the compile sandbox does not support the {platform.machine()} architecture")
    return arch


def _check(ret: int, what: str) -> None:
    if ret < 0:
        err = ctypes.get_errno()
        raise SandboxError(f"{what}: {os.strerror(err)}")


def unshare(flags: int) -> None:
    _check(_libc.unshare(ctypes.c_int(flags)), f"unshare({flags:#x})")


def mount(source: str | None, target: str, fstype: str | None, flags: int, data: str | None = None) -> None:
    def enc(s: str | None) -> bytes | None:
        return s.encode() if s is not None else None

    ret = _libc.mount(enc(source), target.encode(), enc(fstype), flags, enc(data))
    _check(ret, f"mount {source or fstype or ''} on {target}")


def bind_read_only(source: str, target: str, *, device: bool = False) -> None:
    """A read-only bind of one tree (not its submounts: a secret mounted below stays out)."""
    mount(source, target, None, MS_BIND)
    flags = MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | (0 if device else MS_NODEV)
    mount(None, target, None, flags)


def umount_detach(target: str) -> None:
    _check(_libc.umount2(target.encode(), MNT_DETACH), f"umount {target}")


def pivot_root(new_root: str, put_old: str) -> None:
    nr = _NR_PIVOT_ROOT[_arch()]
    ret = _libc.syscall(ctypes.c_long(nr), new_root.encode(), put_old.encode())
    _check(ret, f"pivot_root to {new_root}")


def _prctl(option: int, arg: int, what: str) -> None:
    _check(_libc.prctl(option, arg, 0, 0, 0), what)


def die_with_parent(signal: int) -> None:
    _prctl(_PR_SET_PDEATHSIG, signal, "prctl(PR_SET_PDEATHSIG)")


def set_no_new_privs() -> None:
    _prctl(_PR_SET_NO_NEW_PRIVS, 1, "prctl(PR_SET_NO_NEW_PRIVS)")


def keep_only_capabilities(keep: frozenset[int]) -> None:
    """Drops every capability but `keep` from the bounding, ambient, inheritable, permitted and
    effective sets."""
    cap = 0
    while True:
        if cap not in keep and _libc.prctl(_PR_CAPBSET_DROP, cap, 0, 0, 0) < 0:
            if ctypes.get_errno() == 22:  # EINVAL: past the last capability this kernel has
                break
            _check(-1, f"dropping capability {cap} from the bounding set")
        cap += 1
        if cap > 63:
            break
    _prctl(_PR_CAP_AMBIENT, _PR_CAP_AMBIENT_CLEAR_ALL, "clearing ambient capabilities")
    mask = sum(1 << c for c in keep)
    header = struct.pack("=Ii", _LINUX_CAPABILITY_VERSION_3, 0)
    # Two cap_user_data_t: {effective, permitted, inheritable} for capabilities 0-31, then 32-63.
    low, high = mask & 0xFFFFFFFF, mask >> 32
    data = struct.pack("=6I", low, low, 0, high, high, 0)
    hdr_buf, data_buf = ctypes.create_string_buffer(header), ctypes.create_string_buffer(data)
    _check(_libc.syscall(ctypes.c_long(_NR_CAPSET[_arch()]), hdr_buf, data_buf), "capset")


def deny_syscalls() -> None:
    """A seccomp filter: the syscalls in _DENIED fail with EPERM, a foreign ABI kills the process."""
    arch = _arch()
    ld_abs, jeq, jge, ret = 0x20, 0x15, 0x35, 0x06
    allow, kill, eperm = 0x7FFF0000, 0x80000000, 0x00050000 | 1
    numbers = sorted({nrs[arch] for nrs in _DENIED.values()})
    insns: list[tuple[int, int, int, int]] = [
        (ld_abs, 0, 0, 4),  # seccomp_data.arch
        (jeq, 1, 0, _AUDIT_ARCH[arch]),
        (ret, 0, 0, kill),
        (ld_abs, 0, 0, 0),  # seccomp_data.nr
    ]
    if arch == 0:
        insns.append((jge, len(numbers) + 1, 0, 0x40000000))  # x32 syscalls: deny them all
    for i, nr in enumerate(numbers):
        insns.append((jeq, len(numbers) - i, 0, nr))
    insns += [(ret, 0, 0, allow), (ret, 0, 0, eperm)]
    program = b"".join(struct.pack("=HBBI", *insn) for insn in insns)
    filters = ctypes.create_string_buffer(program)
    fprog = struct.pack("=HxxxxxxQ", len(insns), ctypes.addressof(filters))
    fprog_buf = ctypes.create_string_buffer(fprog)
    ret_code = _libc.prctl(_PR_SET_SECCOMP, _SECCOMP_MODE_FILTER, ctypes.addressof(fprog_buf), 0, 0)
    _check(ret_code, "installing the seccomp filter")
