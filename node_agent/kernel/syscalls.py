"""The few bpf(2) commands the agent needs, called directly through libc.

The long-lived agent never imports BCC (it brings LLVM into the process); compiling happens in a
short-lived worker that pins what it loads. Everything after that — opening pins, creating and
pinning cgroup links, querying attachments — is plain bpf(2), done here with ctypes.
"""

from __future__ import annotations

import ctypes
import os
import platform
import struct
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from node_agent.errors import KernelError
from node_agent.kernel import libc

_NR_BPF = {"x86_64": 321, "aarch64": 280, "ppc64le": 361, "s390x": 351, "riscv64": 280}
_NR_PERF_EVENT_OPEN = {"x86_64": 298, "aarch64": 241, "ppc64le": 319, "s390x": 331, "riscv64": 241}

# bpf_cmd values from include/uapi/linux/bpf.h.
BPF_MAP_LOOKUP_ELEM = 1
BPF_MAP_UPDATE_ELEM = 2
BPF_MAP_DELETE_ELEM = 3
BPF_MAP_GET_NEXT_KEY = 4
BPF_PROG_LOAD = 5
BPF_OBJ_PIN = 6
BPF_OBJ_GET = 7
BPF_PROG_QUERY = 16
BPF_PROG_GET_FD_BY_ID = 13
BPF_MAP_GET_FD_BY_ID = 14
BPF_OBJ_GET_INFO_BY_FD = 15
BPF_LINK_CREATE = 28
BPF_LINK_UPDATE = 29
BPF_LINK_DETACH = 34
BPF_PERF_EVENT = 41  # enum bpf_attach_type
# enum bpf_link_type
BPF_LINK_TYPE_CGROUP = 3
BPF_LINK_TYPE_XDP = 6
BPF_LINK_TYPE_TCX = 11

BPF_F_QUERY_EFFECTIVE = 1 << 0
BPF_F_ALLOW_MULTI = 1 << 1
BPF_F_REPLACE = 1 << 2

_ATTR_SIZE = 128
_libc = libc.load()
_libc.syscall.restype = ctypes.c_long
# bpf(2) through a handle that keeps the GIL: the calls take microseconds, and releasing the GIL
# for each would make the fast path wait up to a switch interval per call to get it back while
# the pass computes (an attach is five of them).
# So do open(2) and close(2) of the attach path (os.open and os.close release it).
_libc_gil = ctypes.PyDLL(_libc._name, use_errno=True)
_libc_gil.syscall.restype = ctypes.c_long
_libc_gil.open.argtypes = (ctypes.c_char_p, ctypes.c_int)
_libc_gil.close.argtypes = (ctypes.c_int,)


def close(fd: int) -> None:
    """close(2), keeping the GIL; raises OSError as os.close does."""
    if _libc_gil.close(fd) < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def open_directory(path: str) -> int:
    """An O_RDONLY | O_DIRECTORY | O_CLOEXEC fd of `path` (a cgroup), keeping the GIL."""
    fd = int(_libc_gil.open(os.fsencode(path), os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC))
    if fd < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), path)
    return fd


@contextmanager
def closing_fd(fd: int) -> Iterator[int]:
    """Closes a file descriptor (a pin, a link, a map) when the block ends."""
    try:
        yield fd
    finally:
        close(fd)


# Looked up once: _bpf runs five times per program when kubelet makes a pod's cgroup.
_NR = _NR_BPF.get(platform.machine())
_NR_ARG = ctypes.c_long(_NR or -1)


def _bpf(cmd: int, attr: ctypes.Array[ctypes.c_char]) -> int:
    if _NR is None:
        raise KernelError(f"bpf(2) syscall number unknown for {platform.machine()}")
    ret = _libc_gil.syscall(_NR_ARG, ctypes.c_int(cmd), attr, ctypes.c_uint(len(attr)))
    if ret < 0:
        err = ctypes.get_errno()
        raise KernelError(f"bpf cmd {cmd}: {os.strerror(err)}", errno=err)
    return int(ret)


def _attr() -> ctypes.Array[ctypes.c_char]:
    return ctypes.create_string_buffer(_ATTR_SIZE)


def _addr(buf: ctypes.Array[ctypes.c_char]) -> int:
    return ctypes.addressof(buf)


# r0 = 0; exit: the smallest program every type accepts, to ask whether the kernel knows the type.
_RETURN_ZERO = bytes.fromhex("b7000000000000009500000000000000")


def prog_load_probe(prog_type: int, expected_attach_type: int = 0) -> bool:
    """Whether this kernel loads a trivial program of the type; nothing stays loaded."""
    insns = ctypes.create_string_buffer(_RETURN_ZERO, len(_RETURN_ZERO))
    license_ = ctypes.create_string_buffer(b"GPL")
    attr = _attr()
    struct.pack_into("=IIQQ", attr, 0, prog_type, len(_RETURN_ZERO) // 8, _addr(insns), _addr(license_))
    struct.pack_into("=I", attr, 68, expected_attach_type)
    try:
        fd = _bpf(BPF_PROG_LOAD, attr)
    except KernelError:
        return False
    os.close(fd)
    return True


def map_update(map_fd: int, key: bytes, value: bytes) -> None:
    key_buf, value_buf = (
        ctypes.create_string_buffer(key, len(key)),
        ctypes.create_string_buffer(value, len(value)),
    )
    attr = _attr()
    struct.pack_into("=IxxxxQQQ", attr, 0, map_fd, _addr(key_buf), _addr(value_buf), 0)
    _bpf(BPF_MAP_UPDATE_ELEM, attr)


def map_delete(map_fd: int, key: bytes) -> None:
    key_buf = ctypes.create_string_buffer(key, len(key))
    attr = _attr()
    struct.pack_into("=IxxxxQ", attr, 0, map_fd, _addr(key_buf))
    _bpf(BPF_MAP_DELETE_ELEM, attr)


def obj_pin(fd: int, path: str) -> None:
    attr = _attr()
    path_buf = ctypes.create_string_buffer(path.encode())
    struct.pack_into("=QI", attr, 0, _addr(path_buf), fd)
    _bpf(BPF_OBJ_PIN, attr)


def obj_get(path: str) -> int:
    """Opens a pinned object and returns a new fd the caller must close."""
    attr = _attr()
    path_buf = ctypes.create_string_buffer(path.encode())
    struct.pack_into("=QI", attr, 0, _addr(path_buf), 0)
    return _bpf(BPF_OBJ_GET, attr)


def map_fd_by_id(map_id: int) -> int:
    attr = _attr()
    struct.pack_into("=I", attr, 0, map_id)
    return _bpf(BPF_MAP_GET_FD_BY_ID, attr)


def prog_fd_by_id(prog_id: int) -> int:
    attr = _attr()
    struct.pack_into("=I", attr, 0, prog_id)
    return _bpf(BPF_PROG_GET_FD_BY_ID, attr)


def link_create_cgroup(prog_fd: int, cgroup_fd: int, attach_type: int) -> int:
    """Creates a cgroup bpf_link. The kernel attaches links in multi mode (BPF_F_ALLOW_MULTI), so
    they coexist with every other program on the cgroup and detach only through this link."""
    attr = _attr()
    struct.pack_into("=IIII", attr, 0, prog_fd, cgroup_fd, attach_type, 0)
    return _bpf(BPF_LINK_CREATE, attr)


PERF_TYPE_TRACEPOINT = 2
_PERF_ATTR_SIZE = 128
_PERF_FLAG_FD_CLOEXEC = 1 << 3
UPROBE_PMU = Path("/sys/bus/event_source/devices/uprobe")


def _perf_event_open(event_type: int, config: int, config1: int = 0, config2: int = 0) -> int:
    """A perf event for every task (pid -1), to attach a program to. Opened on CPU 0, yet the
    program runs on every CPU: tracing programs hang off the event source, not the CPU's event."""
    nr = _NR_PERF_EVENT_OPEN.get(platform.machine())
    if nr is None:
        raise KernelError(f"perf_event_open syscall number unknown for {platform.machine()}")
    attr = ctypes.create_string_buffer(_PERF_ATTR_SIZE)
    struct.pack_into("=IIQQ", attr, 0, event_type, _PERF_ATTR_SIZE, config, 1)  # sample_period 1
    struct.pack_into("=I", attr, 48, 1)  # wakeup_events
    struct.pack_into("=QQ", attr, 56, config1, config2)
    ret = _libc.syscall(
        ctypes.c_long(nr),
        attr,
        ctypes.c_int(-1),
        ctypes.c_int(0),
        ctypes.c_int(-1),
        ctypes.c_ulong(_PERF_FLAG_FD_CLOEXEC),
    )
    if ret < 0:
        err = ctypes.get_errno()
        raise KernelError(f"perf_event_open: {os.strerror(err)}", errno=err)
    return int(ret)


def perf_event_open_tracepoint(tracepoint_id: int) -> int:
    """A perf event on a tracepoint, to attach a program to; fires for every task on every CPU."""
    return _perf_event_open(PERF_TYPE_TRACEPOINT, tracepoint_id)


def _retprobe_bit(pmu: Path) -> int:
    # The format file says where the flag lives, e.g. "config:0".
    field, _, bit = (pmu / "format" / "retprobe").read_text().strip().partition(":")
    if field != "config" or not bit.isdigit():
        raise KernelError(f"unexpected uprobe retprobe format {field}:{bit}")
    return 1 << int(bit)


KPROBE_PMU = Path("/sys/bus/event_source/devices/kprobe")


def perf_event_open_uprobe(path: str, offset: int, retprobe: bool, pmu: Path = UPROBE_PMU) -> int:
    """A perf event on a uprobe (or uretprobe) at a file offset of `path`, for every process that
    runs the file. The kernel probes the inode `path` resolves to, so /proc/self/fd/N works."""
    try:
        pmu_type = int((pmu / "type").read_text())
        config = _retprobe_bit(pmu) if retprobe else 0
    except (OSError, ValueError) as e:
        raise KernelError(f"no uprobe event source at {pmu}: {e}") from None
    path_buf = ctypes.create_string_buffer(path.encode())
    return _perf_event_open(pmu_type, config, _addr(path_buf), offset)


def perf_event_open_kprobe(function: str, retprobe: bool, pmu: Path = KPROBE_PMU) -> int:
    """A perf event on a kprobe (or kretprobe) at the entry of a kernel function."""
    try:
        pmu_type = int((pmu / "type").read_text())
        config = _retprobe_bit(pmu) if retprobe else 0
    except (OSError, ValueError) as e:
        raise KernelError(f"no kprobe event source at {pmu}: {e}") from None
    name_buf = ctypes.create_string_buffer(function.encode())
    return _perf_event_open(pmu_type, config, _addr(name_buf), 0)


# openat2(2), the same number on every architecture (new syscalls share one table since 5.1).
_NR_OPENAT2 = 437
_RESOLVE_NO_MAGICLINKS = 0x02
_RESOLVE_IN_ROOT = 0x10


def open_in_root(root_fd: int, path: str, flags: int) -> int:
    """Opens `path` as if `root_fd` were /: absolute symlinks and .. stay inside it, so a container's
    root can be walked without escaping to the host. Returns an fd the caller must close."""
    how = ctypes.create_string_buffer(24)  # struct open_how {flags, mode, resolve}
    struct.pack_into("=QQQ", how, 0, flags | os.O_CLOEXEC, 0, _RESOLVE_IN_ROOT | _RESOLVE_NO_MAGICLINKS)
    path_buf = ctypes.create_string_buffer(path.encode())
    ret = _libc.syscall(
        ctypes.c_long(_NR_OPENAT2), ctypes.c_int(root_fd), path_buf, how, ctypes.c_size_t(len(how))
    )
    if ret < 0:
        err = ctypes.get_errno()
        raise KernelError(f"openat2 {path}: {os.strerror(err)}", errno=err)
    return int(ret)


def link_create_netdev(prog_fd: int, ifindex: int, attach_type: int, flags: int = 0) -> int:
    """An XDP or tcx link on an interface of the calling thread's network namespace."""
    attr = _attr()
    struct.pack_into("=IIII", attr, 0, prog_fd, ifindex, attach_type, flags)
    return _bpf(BPF_LINK_CREATE, attr)


def link_create_perf_event(prog_fd: int, perf_fd: int) -> int:
    attr = _attr()
    struct.pack_into("=IIII", attr, 0, prog_fd, perf_fd, BPF_PERF_EVENT, 0)
    return _bpf(BPF_LINK_CREATE, attr)


def link_update(link_fd: int, new_prog_fd: int, old_prog_fd: int) -> None:
    """Swaps the link's program in one step; BPF_F_REPLACE makes it fail (EPERM) unless the link
    still runs old_prog_fd's program."""
    attr = _attr()
    struct.pack_into("=IIII", attr, 0, link_fd, new_prog_fd, BPF_F_REPLACE, old_prog_fd)
    _bpf(BPF_LINK_UPDATE, attr)


def link_detach(link_fd: int) -> None:
    """Detaches a link at once, even while pins or fds still hold the link object itself."""
    attr = _attr()
    struct.pack_into("=I", attr, 0, link_fd)
    _bpf(BPF_LINK_DETACH, attr)


@dataclass(frozen=True)
class ProgInfo:
    id: int
    type: int
    name: str
    map_ids: tuple[int, ...]


@dataclass(frozen=True)
class LinkInfo:
    id: int
    type: int
    prog_id: int
    # The cgroup id (cgroup links) or ifindex (netdev links); 0 once the target is gone and the
    # kernel detached the link by itself.
    target_id: int
    attach_type: int


def _info(fd: int, size: int) -> ctypes.Array[ctypes.c_char]:
    info = ctypes.create_string_buffer(size)
    attr = _attr()
    struct.pack_into("=IIQ", attr, 0, fd, size, _addr(info))
    _bpf(BPF_OBJ_GET_INFO_BY_FD, attr)
    return info


def prog_info(fd: int) -> ProgInfo:
    probe = _info(fd, 256)
    prog_type, prog_id = struct.unpack_from("=II", probe, 0)
    nr_map_ids = struct.unpack_from("=I", probe, 52)[0]
    name = bytes(probe[64:80]).split(b"\0", 1)[0].decode(errors="replace")
    map_ids: tuple[int, ...] = ()
    if nr_map_ids:
        ids = (ctypes.c_uint32 * nr_map_ids)()
        info = ctypes.create_string_buffer(256)
        struct.pack_into("=IQ", info, 52, nr_map_ids, ctypes.addressof(ids))
        attr = _attr()
        struct.pack_into("=IIQ", attr, 0, fd, 256, _addr(info))
        _bpf(BPF_OBJ_GET_INFO_BY_FD, attr)
        map_ids = tuple(ids)
    return ProgInfo(id=prog_id, type=prog_type, name=name, map_ids=map_ids)


# struct bpf_prog_info: where the translated (xlated) instructions are described.
_XLATED_LEN_OFFSET = 20
_XLATED_INSNS_OFFSET = 32


def prog_xlated_insns(fd: int) -> bytes:
    """The program's instructions as the verifier left them: helper calls carry the helper's address
    relative to __bpf_call_base. Two calls: the length, then the buffer."""
    length = struct.unpack_from("=I", _info(fd, 256), _XLATED_LEN_OFFSET)[0]
    if not length:
        # The kernel hides them from callers without CAP_BPF/CAP_SYS_ADMIN.
        raise KernelError("the kernel shows no instructions for the program (not privileged?)")
    insns = ctypes.create_string_buffer(length)
    info = ctypes.create_string_buffer(256)
    struct.pack_into("=I", info, _XLATED_LEN_OFFSET, length)
    struct.pack_into("=Q", info, _XLATED_INSNS_OFFSET, _addr(insns))
    attr = _attr()
    struct.pack_into("=IIQ", attr, 0, fd, len(info), _addr(info))
    _bpf(BPF_OBJ_GET_INFO_BY_FD, attr)
    return insns.raw[: min(length, struct.unpack_from("=I", info, _XLATED_LEN_OFFSET)[0])]


def link_info(fd: int) -> LinkInfo:
    info = _info(fd, 64)
    link_type, link_id, prog_id = struct.unpack_from("=III", info, 0)
    if link_type in (BPF_LINK_TYPE_XDP, BPF_LINK_TYPE_TCX):
        target_id, attach_type = struct.unpack_from("=II", info, 16)
    elif link_type == BPF_LINK_TYPE_CGROUP:
        target_id, attach_type = struct.unpack_from("=QI", info, 16)
    else:
        target_id, attach_type = 1, 0  # perf event links: their target lives as long as they do
    return LinkInfo(link_id, link_type, prog_id, target_id, attach_type)


def prog_query(cgroup_fd: int, attach_type: int, max_progs: int = 64) -> list[int]:
    """Program ids attached directly to a cgroup for one attach type (BPF_PROG_QUERY)."""
    ids = (ctypes.c_uint32 * max_progs)()
    attr = _attr()
    struct.pack_into("=IIII", attr, 0, cgroup_fd, attach_type, 0, 0)
    struct.pack_into("=QI", attr, 16, ctypes.addressof(ids), max_progs)
    _bpf(BPF_PROG_QUERY, attr)
    count = struct.unpack_from("=I", attr, 24)[0]
    return list(ids[: min(count, max_progs)])


def map_items(map_fd: int, key_size: int, value_size: int, limit: int = 65536) -> list[tuple[bytes, bytes]]:
    """Every (key, value) of a hash or array map, as raw bytes."""
    items: list[tuple[bytes, bytes]] = []
    key = ctypes.create_string_buffer(key_size)
    next_key = ctypes.create_string_buffer(key_size)
    value = ctypes.create_string_buffer(value_size)
    have_key = False
    while len(items) < limit:
        attr = _attr()
        struct.pack_into("=IxxxxQQ", attr, 0, map_fd, _addr(key) if have_key else 0, _addr(next_key))
        try:
            _bpf(BPF_MAP_GET_NEXT_KEY, attr)
        except KernelError as e:
            if e.errno == 2:  # ENOENT: past the last key
                break
            raise
        ctypes.memmove(key, next_key, key_size)
        have_key = True
        attr = _attr()
        struct.pack_into("=IxxxxQQ", attr, 0, map_fd, _addr(key), _addr(value))
        try:
            _bpf(BPF_MAP_LOOKUP_ELEM, attr)
        except KernelError as e:
            if e.errno == 2:  # deleted between the two calls
                continue
            raise
        items.append((key.raw, value.raw))
    return items


@dataclass(frozen=True)
class MapInfo:
    id: int
    type: int
    key_size: int
    value_size: int
    max_entries: int
    name: str
    flags: int = 0


def map_info(fd: int) -> MapInfo:
    info = _info(fd, 96)
    map_type, map_id, key_size, value_size, max_entries, flags = struct.unpack_from("=IIIIII", info, 0)
    name = bytes(info[24:40]).split(b"\0", 1)[0].decode(errors="replace")
    return MapInfo(map_id, map_type, key_size, value_size, max_entries, name, flags)
