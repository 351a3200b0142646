"""A thin ctypes binding to the system's libbpf (libbpf.so.1): only what loading one object needs.

Used by the compile worker alone (bytecode_build), inside its sandbox. Every function gets its
argtypes and restype, so that no pointer is cut to an int on the way. libbpf reports errors as
negative errno returns, or NULL with errno set (its 1.0 mode, the only one of libbpf 1.x).
libbpf's own messages, the verifier's log among them, go to `captured_messages()`.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass

from node_agent.errors import KernelError

LIBRARY = "libbpf.so.1"
LOG_WARN, LOG_INFO, LOG_DEBUG = 0, 1, 2
BTF_KIND_INT, BTF_KIND_PTR, BTF_KIND_ARRAY, BTF_KIND_STRUCT, BTF_KIND_UNION = 1, 2, 3, 4, 5
BTF_KIND_ENUM, BTF_KIND_FWD, BTF_KIND_TYPEDEF, BTF_KIND_VOLATILE, BTF_KIND_CONST = 6, 7, 8, 9, 10
BTF_KIND_RESTRICT, BTF_KIND_FUNC, BTF_KIND_FUNC_PROTO, BTF_KIND_VAR, BTF_KIND_DATASEC = 11, 12, 13, 14, 15
BTF_KIND_FLOAT, BTF_KIND_DECL_TAG, BTF_KIND_TYPE_TAG, BTF_KIND_ENUM64 = 16, 17, 18, 19
BTF_INT_SIGNED = 1


class LibbpfError(KernelError):
    """libbpf is missing, or one of its calls failed."""


class OpenOpts(ctypes.Structure):
    """struct bpf_object_open_opts of libbpf 1.1 (libbpf checks `sz`, so older and newer agree)."""

    _fields_ = [
        ("sz", ctypes.c_size_t),
        ("object_name", ctypes.c_char_p),
        ("relaxed_maps", ctypes.c_bool),
        ("pin_root_path", ctypes.c_char_p),
        ("_attach_prog_fd", ctypes.c_uint32),
        ("kconfig", ctypes.c_char_p),
        ("btf_custom_path", ctypes.c_char_p),
        ("kernel_log_buf", ctypes.c_char_p),
        ("kernel_log_size", ctypes.c_size_t),
        ("kernel_log_level", ctypes.c_uint32),
    ]


class BtfType(ctypes.Structure):
    _fields_ = [("name_off", ctypes.c_uint32), ("info", ctypes.c_uint32), ("size_or_type", ctypes.c_uint32)]


@dataclass(frozen=True)
class TypeInfo:
    """One BTF type as read: its kind, name, size (or referenced type), and the words after it."""

    kind: int
    name: str
    vlen: int
    kind_flag: bool
    size_or_type: int
    extra: tuple[int, ...]  # the u32 words that follow struct btf_type for this kind


_P = ctypes.c_void_p
_PRINT_FN = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_void_p)
_SIGNATURES: dict[str, tuple[list[object], object]] = {
    "bpf_object__open_mem": ([_P, ctypes.c_size_t, ctypes.POINTER(OpenOpts)], _P),
    "bpf_object__load": ([_P], ctypes.c_int),
    "bpf_object__close": ([_P], None),
    "bpf_object__btf": ([_P], _P),
    "bpf_object__next_program": ([_P, _P], _P),
    "bpf_object__next_map": ([_P, _P], _P),
    "bpf_program__name": ([_P], ctypes.c_char_p),
    "bpf_program__section_name": ([_P], ctypes.c_char_p),
    "bpf_program__set_type": ([_P, ctypes.c_int], ctypes.c_int),
    "bpf_program__set_expected_attach_type": ([_P, ctypes.c_int], ctypes.c_int),
    "bpf_program__set_autoload": ([_P, ctypes.c_bool], ctypes.c_int),
    "bpf_program__fd": ([_P], ctypes.c_int),
    "bpf_program__set_log_buf": ([_P, ctypes.c_void_p, ctypes.c_size_t], ctypes.c_int),
    "bpf_map__name": ([_P], ctypes.c_char_p),
    "bpf_map__type": ([_P], ctypes.c_int),
    "bpf_map__key_size": ([_P], ctypes.c_uint32),
    "bpf_map__value_size": ([_P], ctypes.c_uint32),
    "bpf_map__max_entries": ([_P], ctypes.c_uint32),
    "bpf_map__map_flags": ([_P], ctypes.c_uint32),
    "bpf_map__btf_key_type_id": ([_P], ctypes.c_uint32),
    "bpf_map__btf_value_type_id": ([_P], ctypes.c_uint32),
    "bpf_map__pin_path": ([_P], ctypes.c_char_p),
    "bpf_map__is_internal": ([_P], ctypes.c_bool),
    "bpf_map__initial_value": ([_P, ctypes.POINTER(ctypes.c_size_t)], _P),
    "bpf_map__set_initial_value": ([_P, ctypes.c_char_p, ctypes.c_size_t], ctypes.c_int),
    "bpf_map__reuse_fd": ([_P, ctypes.c_int], ctypes.c_int),
    "bpf_map__fd": ([_P], ctypes.c_int),
    "btf__type_cnt": ([_P], ctypes.c_uint32),
    "btf__type_by_id": ([_P, ctypes.c_uint32], ctypes.POINTER(BtfType)),
    "btf__name_by_offset": ([_P, ctypes.c_uint32], ctypes.c_char_p),
    "libbpf_set_print": ([_PRINT_FN], _P),
}
# How many u32 words follow struct btf_type: per kind, fixed or per member (vlen).
_FIXED_WORDS = {BTF_KIND_INT: 1, BTF_KIND_ARRAY: 3, BTF_KIND_VAR: 1, BTF_KIND_DECL_TAG: 1}
_WORDS_PER_MEMBER = {
    BTF_KIND_STRUCT: 3,
    BTF_KIND_UNION: 3,
    BTF_KIND_ENUM: 2,
    BTF_KIND_FUNC_PROTO: 2,
    BTF_KIND_DATASEC: 3,
    BTF_KIND_ENUM64: 3,
}

_lib: ctypes.CDLL | None = None
_lock = threading.Lock()
_messages: list[str] | None = None  # where libbpf's print callback writes, while captured


def lib() -> ctypes.CDLL:
    """libbpf, loaded once, its functions declared."""
    global _lib
    with _lock:
        if _lib is None:
            try:
                handle = ctypes.CDLL(LIBRARY, use_errno=True)
            except OSError as e:
                raise LibbpfError(f"{LIBRARY} cannot be loaded: {e}") from None
            for name, (argtypes, restype) in _SIGNATURES.items():
                function = getattr(handle, name)
                function.argtypes, function.restype = argtypes, restype
            handle.libbpf_set_print(_print_callback)
            _lib = handle
        return _lib


_libc = ctypes.CDLL(None)  # the process's own symbols: libc's among them
_libc.vsnprintf.argtypes = [ctypes.c_char_p, ctypes.c_size_t, ctypes.c_char_p, ctypes.c_void_p]
_libc.vsnprintf.restype = ctypes.c_int


@_PRINT_FN
def _print_callback(level: int, fmt: bytes, args: int) -> int:
    # va_list reaches us as a pointer (x86-64, arm64): libc formats it.
    if _messages is None or level == LOG_DEBUG:
        return 0
    buf = ctypes.create_string_buffer(64 << 10)
    _libc.vsnprintf(buf, len(buf), fmt, args)
    _messages.append(buf.value.decode(errors="replace"))
    return 0


@contextlib.contextmanager
def captured_messages() -> Iterator[list[str]]:
    """libbpf's warnings and notes (the verifier log among them) while the block runs."""
    global _messages
    lib()
    _messages = []
    try:
        yield _messages
    finally:
        _messages = None


def check(result: int, what: str) -> int:
    if result < 0:
        raise LibbpfError(f"{what}: {os.strerror(-result)}")
    return result


def open_mem(
    data: bytes, object_name: str, btf_custom_path: str | None
) -> tuple[int, ctypes.Array[ctypes.c_char]]:
    """An opened (not loaded) object of the ELF bytes; the buffer returned must outlive it."""
    buf = ctypes.create_string_buffer(data, len(data))
    opts = OpenOpts(sz=ctypes.sizeof(OpenOpts), object_name=object_name.encode())
    if btf_custom_path:
        opts.btf_custom_path = btf_custom_path.encode()
    obj = lib().bpf_object__open_mem(buf, len(data), ctypes.byref(opts))
    if not obj:
        raise LibbpfError(f"not a BPF object: {os.strerror(ctypes.get_errno())}")
    return obj, buf


def programs(obj: int) -> list[int]:
    found, prog = [], None
    while prog := lib().bpf_object__next_program(obj, prog):
        found.append(prog)
    return found


def maps(obj: int) -> list[int]:
    found, map_ = [], None
    while map_ := lib().bpf_object__next_map(obj, map_):
        found.append(map_)
    return found


def text(value: bytes | None) -> str:
    return value.decode(errors="replace") if value else ""


def btf_type(btf: int, type_id: int) -> TypeInfo | None:
    """The BTF type `type_id` of `btf`, or None when there is none."""
    pointer = lib().btf__type_by_id(btf, type_id)
    if not pointer:
        return None
    head = pointer.contents
    kind, vlen = (head.info >> 24) & 0x1F, head.info & 0xFFFF
    words = _FIXED_WORDS.get(kind, 0) + _WORDS_PER_MEMBER.get(kind, 0) * vlen
    extra = ctypes.cast(ctypes.addressof(head) + ctypes.sizeof(BtfType), ctypes.POINTER(ctypes.c_uint32))
    return TypeInfo(
        kind=kind,
        name=text(lib().btf__name_by_offset(btf, head.name_off)),
        vlen=vlen,
        kind_flag=bool(head.info >> 31),
        size_or_type=head.size_or_type,
        extra=tuple(extra[i] for i in range(words)),
    )


def name_at(btf: int, offset: int) -> str:
    return text(lib().btf__name_by_offset(btf, offset))


def initial_value(map_: int) -> bytes:
    size = ctypes.c_size_t()
    pointer = lib().bpf_map__initial_value(map_, ctypes.byref(size))
    return ctypes.string_at(pointer, size.value) if pointer else b""
