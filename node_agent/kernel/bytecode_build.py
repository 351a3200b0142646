"""What the compile worker does with bytecode: load one program of a CO-RE ELF with libbpf, hand
back the fds. The same shape as bcc_build's build, and the same road after it (the agent checks
the loaded instructions and the maps, then pins). No compiler runs and bcc is never imported.

The ELF is hostile input, so a build:
- loads only the function the spec names (autoload off for every other program of the object),
  with the program type and expected attach type of the spec, never of the ELF's section names;
- refuses what would reach outside the program: a map with a pin path (libbpf's pinning by name
  opens or creates a pin), struct_ops maps (they attach kernel callbacks), map or function names of
  the agent's own (bpfleet_*), and for an EbpfProgram extern kernel variables and kfuncs (`__ksym`:
  the ELF's undefined symbols but `.kconfig` values);
- sets parameters into `.rodata` globals (bytecode_params), never into code;
- resolves CO-RE relocations against the node's BTF, which the worker opened before its sandbox
  (request["btfPath"], a /proc/self/fd path: the sandbox has no /sys);
- caps the memory of every map it created, `.rodata`/`.data`/`.bss` included (map_memory);
- with the previous version's maps, reuses each whose layout is unchanged (bpf_map__reuse_fd);
- with `entryPoint`, loads the agent's prebuilt pod filter (request["entryBytecode"]) in front: the
  user's program goes in slot 0 of its bpfleet_progs, exactly as with the BCC prelude.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import ctypes
import os
import struct
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from node_agent.kernel import bpf_elf, bytecode_btf, bytecode_params, map_memory, map_reuse, syscalls
from node_agent.kernel import libbpf as lb
from node_agent.kernel.built import BuildFailure, BuiltProgram, check_map_cap

RESERVED_PREFIX = "bpfleet_"
ENTRY_FUNCTION = "bpfleet_entry"
PROG_ARRAY = "bpfleet_progs"
KERNEL_NAME_LEN = 15  # BPF_OBJ_NAME_LEN - 1: what the kernel keeps of a map's name, and pins use
MAP_TYPE_STRUCT_OPS = 26
# The verifier's log of a refused program. The kernel keeps its end when it is longer (a rotating
# log, Linux 6.4+): the end is where the verifier says why.
VERIFIER_LOG_BYTES = 1 << 20


@dataclass
class _Object:
    """An opened libbpf object and the buffer it was opened from (which must outlive it)."""

    handle: int
    buffer: Any
    data: bytes
    log: Any = None  # the verifier log buffer of the program to load
    maps: dict[str, int] = field(default_factory=dict)  # kernel name -> struct bpf_map *

    def close(self) -> None:
        if self.handle:
            lb.lib().bpf_object__close(self.handle)
            self.handle = 0


def build(request: dict[str, Any], previous: dict[str, tuple[str, int]] | None = None) -> BuiltProgram:
    """Loads request["function"] of request["bytecode"] (base64 ELF); raises BuildFailure.

    Request fields: bytecode, function, progType, attachType, entryPoint, entryBytecode, parameters
    ({name: int | str}), maxMapBytes, btfPath, cluster. `previous`: name -> (layout, fd), the caller's.
    """
    function = str(request["function"])
    if function.lower().startswith(RESERVED_PREFIX):
        raise BuildFailure(
            "FunctionNotFound",
            f"function {function!r}: names starting with {RESERVED_PREFIX} are reserved for the agent",
        )
    entry = bool(request.get("entryPoint"))
    built, sizes = BuiltProgram(), {}
    try:
        with lb.captured_messages() as messages, _opened(_elf(request, "bytecode"), "prog", request) as user:
            _check_object(user, request)
            prog = _only_program(user, function, request)
            _set_parameters(user, request.get("parameters") or {})
            layouts = _layouts(user)
            _reuse(user, layouts, previous or {})
            _load(user, function, messages)
            user_fd = _loaded_fd(prog, request)
            built.progs["user" if entry else "prog"] = user_fd
            sizes.update(_collect_maps(user, user_fd, built))
            built.layouts = {name: layouts[name] for name in built.maps if name in layouts}
            if entry:
                sizes.update(_load_entry(request, user_fd, built, messages))
        check_map_cap(sizes, request.get("maxMapBytes"))
    except BaseException:
        built.close()
        raise
    return built


def _elf(request: dict[str, Any], key: str) -> bytes:
    try:
        data = base64.b64decode(str(request[key]), validate=True)
    except (binascii.Error, ValueError):
        raise BuildFailure("CompileError", "the bytecode is not valid base64") from None
    bpf_elf.check_header(data)
    return data


@contextlib.contextmanager
def _opened(data: bytes, name: str, request: dict[str, Any]) -> Iterator[_Object]:
    btf_path = request.get("btfPath") or None
    try:
        handle, buffer = lb.open_mem(data, name, btf_path)
    except lb.LibbpfError as e:
        raise BuildFailure("CompileError", f"the ELF object cannot be read as BPF bytecode: {e}") from None
    obj = _Object(handle, buffer, data)
    try:
        yield obj
    finally:
        obj.close()


def _check_object(obj: _Object, request: dict[str, Any]) -> None:
    """Refuses what reaches outside the program (see the module's docstring)."""
    lib = lb.lib()
    refusals = []
    for map_ in lb.maps(obj.handle):
        name = lb.text(lib.bpf_map__name(map_))
        if lib.bpf_map__pin_path(map_):
            refusals.append(f"map {name} is pinned ({lb.text(lib.bpf_map__pin_path(map_))})")
        elif lib.bpf_map__type(map_) == MAP_TYPE_STRUCT_OPS:
            refusals.append(f"map {name} is a struct_ops map")
        elif not lib.bpf_map__is_internal(map_) and name.lower().startswith(RESERVED_PREFIX):
            refusals.append(f"map {name}: names starting with {RESERVED_PREFIX} are reserved for the agent")
        if lib.bpf_map__is_internal(map_):
            continue
        kernel_name = name[:KERNEL_NAME_LEN]
        if kernel_name in obj.maps:
            refusals.append(f"maps {name} and another have the same first {KERNEL_NAME_LEN} characters")
        obj.maps[kernel_name] = map_
    if refusals:
        raise BuildFailure("MapNotAllowed", "; ".join(refusals))
    if not request.get("cluster"):
        # Undefined symbols but the .kconfig values: kernel variables and kfuncs.
        kconfig = bytecode_btf.section_globals(lib.bpf_object__btf(obj.handle), bytecode_btf.KCONFIG_SECTION)
        kernel_symbols = [name for name in bpf_elf.undefined_symbols(obj.data) if name not in kconfig]
        if kernel_symbols:
            raise BuildFailure(
                "HelperNotAllowed",
                f"the object uses kernel symbols or kfuncs ({', '.join(sorted(kernel_symbols))}): an"
                " EbpfProgram may not; a ClusterEbpfProgram may",
            )


def _only_program(obj: _Object, function: str, request: dict[str, Any]) -> int:
    lib, chosen = lb.lib(), None
    for prog in lb.programs(obj.handle):
        if lb.text(lib.bpf_program__name(prog)) == function:
            chosen = prog
        else:
            lb.check(lib.bpf_program__set_autoload(prog, False), "autoload")
    if chosen is None:
        raise BuildFailure("FunctionNotFound", f"the object has no program named {function!r}")
    _set_type(obj, chosen, request)
    return chosen


def _set_type(obj: _Object, prog: int, request: dict[str, Any]) -> None:
    lib = lb.lib()
    # Asked for by libbpf only when a first load without a log failed.
    obj.log = ctypes.create_string_buffer(VERIFIER_LOG_BYTES)
    lb.check(lib.bpf_program__set_log_buf(prog, obj.log, VERIFIER_LOG_BYTES), "verifier log")
    lb.check(lib.bpf_program__set_autoload(prog, True), "autoload")
    lb.check(lib.bpf_program__set_type(prog, int(request["progType"])), "program type")
    # -1: the type takes none at load (CgroupSkb); 0 also overrides what the section name implied.
    attach_type = max(int(request["attachType"]), 0)
    lb.check(lib.bpf_program__set_expected_attach_type(prog, attach_type), "attach type")


def _set_parameters(obj: _Object, parameters: dict[str, int | str]) -> None:
    for name in parameters:
        if name.lower().startswith(RESERVED_PREFIX):
            raise BuildFailure("CompileError", f"parameter {name}: names starting with BPFLEET_ are reserved")
    if not parameters:
        return
    lib = lb.lib()
    rodata = next(
        (m for m in lb.maps(obj.handle) if lib.bpf_map__is_internal(m) and _is_rodata(m)),
        None,
    )
    if rodata is None:
        bytecode_params.apply(b"", {}, parameters)  # refuses the first name: nothing to set
        return
    variables = _rodata_globals(obj)
    data = bytecode_params.apply(lb.initial_value(rodata), variables, parameters)
    lb.check(lib.bpf_map__set_initial_value(rodata, data, len(data)), "setting .rodata")


def _rodata_globals(obj: _Object) -> dict[str, bytecode_btf.Global]:
    return bytecode_btf.section_globals(lb.lib().bpf_object__btf(obj.handle), bytecode_params.RODATA)


def _is_rodata(map_: int) -> bool:
    return lb.text(lb.lib().bpf_map__name(map_)).endswith(bytecode_params.RODATA)


def _layouts(obj: _Object) -> dict[str, str]:
    """Each map's layout digest, by kernel name: libbpf's figures of the map and its BTF types."""
    lib, layouts = lb.lib(), {}
    btf = lib.bpf_object__btf(obj.handle)
    for name, map_ in obj.maps.items():
        info = syscalls.MapInfo(
            0,
            lib.bpf_map__type(map_),
            lib.bpf_map__key_size(map_),
            lib.bpf_map__value_size(map_),
            lib.bpf_map__max_entries(map_),
            name,
            lib.bpf_map__map_flags(map_),
        )
        key = bytecode_btf.describe(btf, lib.bpf_map__btf_key_type_id(map_))
        value = bytecode_btf.describe(btf, lib.bpf_map__btf_value_type_id(map_))
        layouts[name] = map_reuse.digest(info, key, value)
    return layouts


def _reuse(obj: _Object, layouts: dict[str, str], previous: dict[str, tuple[str, int]]) -> None:
    for name, map_ in obj.maps.items():
        old = previous.get(name)
        if old is None or old[0] != layouts.get(name):
            continue
        info = syscalls.map_info(old[1])
        if info.name == name and map_reuse.reusable(info):
            lb.check(lb.lib().bpf_map__reuse_fd(map_, old[1]), f"reusing map {name}")


def _load(obj: _Object, function: str, messages: list[str]) -> None:
    del messages[:]
    result = lb.lib().bpf_object__load(obj.handle)
    if result == 0:
        return
    text = "".join(messages)
    log = obj.log.value.decode(errors="replace").strip() if obj.log is not None else ""
    if log:
        raise BuildFailure("VerifierRejected", log)
    if result == -12:  # ENOMEM: a map larger than the worker may allocate
        raise BuildFailure("MapTooLarge", f"a map of {function} could not be allocated: {text.strip()}")
    raise BuildFailure("CompileError", f"libbpf could not load the object: {os.strerror(-result)}\n{text}")


def _loaded_fd(prog: int, request: dict[str, Any]) -> int:
    """A dup of the loaded program's fd, once the kernel confirms it has the spec's type."""
    fd = os.dup(lb.lib().bpf_program__fd(prog))
    kernel_type = syscalls.prog_info(fd).type
    if kernel_type != int(request["progType"]):
        os.close(fd)
        raise BuildFailure(
            "CompileError", f"the program loaded as type {kernel_type}, not {request['progType']}"
        )
    return fd


def _collect_maps(obj: _Object, prog_fd: int, built: BuiltProgram) -> dict[str, int]:
    """Hands over (dups of) the maps the loaded program uses, internal ones aside; returns the
    memory of every map the object created, used or not."""
    lib, sizes = lb.lib(), {}
    used = set(syscalls.prog_info(prog_fd).map_ids)
    for map_ in lb.maps(obj.handle):
        fd = lib.bpf_map__fd(map_)
        if fd < 0:
            continue
        name = syscalls.map_info(fd).name
        sizes[name] = map_memory.memlock(fd)
        if not lib.bpf_map__is_internal(map_) and syscalls.map_info(fd).id in used:
            built.maps[name] = os.dup(fd)
    return sizes


def _load_entry(
    request: dict[str, Any], user_fd: int, built: BuiltProgram, messages: list[str]
) -> dict[str, int]:
    """The agent's pod filter in front of the user's program; returns its maps' memory."""
    if not request.get("entryBytecode"):
        raise BuildFailure("CompileError", "this agent has no pod filter (bpfleet_entry.bpf.o) to load with")
    with _opened(_elf(request, "entryBytecode"), "bpfleet", request) as entry:
        prog = next(
            (
                p
                for p in lb.programs(entry.handle)
                if lb.text(lb.lib().bpf_program__name(p)) == ENTRY_FUNCTION
            ),
            None,
        )
        if prog is None:
            raise BuildFailure("CompileError", f"the agent's pod filter has no {ENTRY_FUNCTION}")
        _set_type(entry, prog, request)
        _load(entry, ENTRY_FUNCTION, messages)
        entry_fd = _loaded_fd(prog, request)
        built.progs["prog"] = entry_fd
        sizes = _collect_maps(entry, entry_fd, built)
        # From now on the user's program runs through the filter only.
        syscalls.map_update(built.maps[PROG_ARRAY], struct.pack("=I", 0), struct.pack("=I", user_fd))
        return sizes
