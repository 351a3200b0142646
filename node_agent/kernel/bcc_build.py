"""What the compile worker does with BCC: compile a source, load its functions, hand back the fds.

Runs inside the compile worker only (never in the agent): it imports bcc. The worker ships the
file descriptors returned here to the agent, which checks and pins them.

The source is hostile input, so a build:
- attaches nothing: BCC's autoload of kprobe__*, tracepoint__*, TRACEPOINT_PROBE and the like is
  switched off, and the compile runs under a guard that makes attaching fail anyway (compile_guard);
- keeps tables private: no pinned, extern, public or shared table (table_policy);
- caps the kernel memory of the program's maps (map_memory);
- shows the user only diagnostics of their own program.c (compiler_output);
- with the previous version's maps (`previous`), uses each one whose layout is unchanged instead of
  a fresh map (map_reuse), so counters carry over;
- with `entryPoint` (filtered scopes), enforces the pod filter: role "prog", what gets attached, is
  the prelude's bpfleet_entry, which tail-calls the user's function (role "user") for the selected
  pods only (bpf/include/node_wide_prelude.h).
"""

from __future__ import annotations

import os
import re
import struct
from collections.abc import Callable
from typing import Any

from node_agent.errors import KernelError
from node_agent.kernel import compile_guard, map_memory, map_reuse, syscalls, table_policy
from node_agent.kernel.built import BuildFailure, BuiltProgram, check_map_cap
from node_agent.kernel.compiler_output import USER_FILE_NAME, user_diagnostics
from node_agent.kernel.stderr_capture import captured_fd, captured_stderr

__all__ = ["USER_FILE_NAME", "BuildFailure", "BuiltProgram", "build"]

RESERVED_PREFIX = "bpfleet_"  # the agent's own functions and parameters
ENTRY_FUNCTION = "bpfleet_entry"  # the prelude's pod filter, attached in front of the user's function
PROG_ARRAY = "bpfleet_progs"  # its tail-call slot 0 holds the user's function
_DEBUG_LLVM_IR = 0x1  # BCC prints the module's IR to stdout: where table_policy reads the sections
_DEFINE = re.compile(r"^-D(?P<name>[A-Za-z_]\w*)(?:=|$)")


# What BCC says when the kernel refuses to allocate a map (ENOMEM).
_MAP_WITHOUT_MEMORY = re.compile(r"could not open bpf map: (?P<name>\w+), error: Cannot allocate memory")


def build(request: dict[str, Any], previous: dict[str, tuple[str, int]] | None = None) -> BuiltProgram:
    """Compiles and loads request["function"]; raises BuildFailure with what the user should read.

    Request fields: source, function, progType, attachType, includeDirs, cflags, prelude,
    entryPoint (bool: put the pod filter in front), maxMapBytes (int > 0; absent or 0: 64 MiB).
    `previous`: the previous version's maps, name -> (layout digest, fd), still the caller's.
    """
    _check_names(request)
    entry = bool(request.get("entryPoint"))
    if entry and not request.get("prelude"):
        raise BuildFailure("CompileError", "this agent has no pod filter (node_wide_prelude.h) to build with")
    bpf = compile_source(request)
    built = BuiltProgram()
    try:
        layouts = _layouts(bpf)
        # Before any function is loaded: the instructions take the fds as they are then.
        map_reuse.adopt(_kernel_names(bpf), layouts, previous or {})
        _load(bpf, request, entry, built)
        sizes = _map_sizes(bpf, built)
        built.layouts = {name: layouts[name] for name in built.maps if name in layouts}
        check_map_cap(sizes, request.get("maxMapBytes"))
    except BaseException:
        built.close()
        raise
    finally:
        bpf.cleanup()  # BCC's own fds; the dups in `built` keep what is handed back
    return built


def _check_names(request: dict[str, Any]) -> None:
    function = str(request["function"])
    if function.lower().startswith(RESERVED_PREFIX):
        raise BuildFailure(
            "FunctionNotFound",
            f"function {function!r}: names starting with {RESERVED_PREFIX} are reserved for the agent",
        )
    # Parameters are -D defines, which reach the prelude too: the pod filter's own knobs
    # (BPFLEET_MAX_CGROUP_LEVEL, say) are not the user's to set.
    for flag in request["cflags"]:
        define = _DEFINE.match(flag)
        if define and define["name"].lower().startswith(RESERVED_PREFIX):
            raise BuildFailure(
                "CompileError",
                f"parameter {define['name']}: names starting with BPFLEET_ are reserved for the agent",
            )


def _source(request: dict[str, Any]) -> str:
    prelude = request.get("prelude") or ""
    if not prelude:
        return str(request["source"])  # BCC's main file is the user's file: its lines keep their text
    # The line directive keeps diagnostics in the user's own file name and line numbers; the
    # prelude before it is the agent's (compiler_output elides what is located there).
    return f'{prelude}\n#line 1 "{USER_FILE_NAME}"\n{request["source"]}'


def compile_source(request: dict[str, Any]) -> Any:
    """BCC's module of the source, compiled under the guard, with its tables checked; nothing is
    loaded or attached yet. The caller owns the BPF object (cleanup() releases it)."""
    from bcc import BPF

    class NoAutoloadBPF(BPF):  # type: ignore[misc]
        def _trace_autoload(self) -> None:
            """BPF() would load and attach kprobe__*, tracepoint__*, kfunc__*, lsm__* ... here, for
            as long as the process lives. A build attaches nothing: the agent decides that."""

    cflags = [f"-I{d}" for d in request["includeDirs"]] + list(request["cflags"])
    text = _source(request).encode()
    compiled: list[Any] = []

    def compile_() -> None:
        compiled.append(NoAutoloadBPF(text=text, cflags=cflags, debug=_DEBUG_LLVM_IR))

    with captured_fd(1) as ir, captured_fd(2) as output:
        try:
            compile_guard.run_guarded(compile_)
        except compile_guard.GuardUnavailable as e:
            raise BuildFailure("CompileError", f"this node cannot compile programs safely: {e}") from None
        except Exception:
            pass  # the diagnostics say why
    bpf = compiled[0] if compiled else None
    refusals = table_policy.refusals_in_output(output.text)
    if bpf is not None:
        if "; ModuleID" not in ir.text:
            bpf.cleanup()
            raise BuildFailure("CompileError", "the compiled module could not be checked (no IR from BCC)")
        # The module's sections name every such table; BCC's messages only some.
        refusals = table_policy.refusals_in_ir(ir.text) or refusals
    if refusals:
        if bpf is not None:
            bpf.cleanup()
        raise BuildFailure("MapNotAllowed", table_policy.message(refusals))
    if bpf is None:
        unallocated = _MAP_WITHOUT_MEMORY.search(output.text)
        if unallocated:
            # A map so large the kernel could not allocate it within the compile's memory limit:
            # too large, whatever the cap.
            limit = map_memory.cap(request.get("maxMapBytes"))
            raise BuildFailure(
                "MapTooLarge",
                f"map {unallocated['name']} is larger than the memory a compile may use; this "
                f"program's maps may use {map_memory.human(limit)} in all",
            )
        diagnostics = user_diagnostics(output.text, main_is_user=not request.get("prelude"))
        raise BuildFailure("CompileError", diagnostics or "the compiler failed without diagnostics")
    return bpf


def _load(bpf: Any, request: dict[str, Any], entry: bool, built: BuiltProgram) -> None:
    function = str(request["function"])
    user_fd = _load_function(bpf, function, request)
    if not entry:
        built.progs["prog"] = user_fd
        return
    built.progs["user"] = user_fd
    entry_fd = _load_function(
        bpf, ENTRY_FUNCTION, request, missing=lambda: f"the agent's prelude has no {ENTRY_FUNCTION}"
    )
    built.progs["prog"] = entry_fd
    # The user's function goes in the filter's only slot: from now on it runs through the filter.
    syscalls.map_update(bpf[PROG_ARRAY.encode()].map_fd, struct.pack("=I", 0), struct.pack("=I", user_fd))


def _load_function(
    bpf: Any, name: str, request: dict[str, Any], missing: Callable[[], str] | None = None
) -> int:
    with captured_stderr() as log:
        try:
            fn = bpf.load_func(name.encode(), request["progType"], attach_type=request["attachType"])
            error = None
        except Exception as e:
            error = str(e)
    if error is None:
        return os.dup(fn.fd)  # BCC closes its own fds when the BPF object goes
    if error.startswith("Unknown program"):
        if missing is not None:
            raise BuildFailure("CompileError", missing())
        raise BuildFailure("FunctionNotFound", f"the source has no function named {name!r}")
    raise BuildFailure("VerifierRejected", log.text or error)


def _bcc_tables(module: int) -> list[tuple[str, int]]:
    """(name, fd) of every table BCC created for the module, used or not. bcc's Python bindings
    declare no prototypes for these calls, hence a handle of our own."""
    import ctypes

    from bcc.libbcc import lib as bcc_lib

    lib = ctypes.CDLL(bcc_lib._name)
    lib.bpf_num_tables.restype = ctypes.c_size_t
    lib.bpf_num_tables.argtypes = [ctypes.c_void_p]
    lib.bpf_table_name.restype = ctypes.c_char_p
    lib.bpf_table_name.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    lib.bpf_table_fd_id.restype = ctypes.c_int
    lib.bpf_table_fd_id.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    tables = []
    for i in range(lib.bpf_num_tables(module)):
        fd, name = lib.bpf_table_fd_id(module, i), lib.bpf_table_name(module, i)
        if fd >= 0 and name:
            tables.append((name.decode(errors="replace"), fd))
    return tables


def _kernel_names(bpf: Any) -> dict[str, int]:
    """BCC's tables by the kernel's name of their map (pins use it: 15 characters at most)."""
    by_name: dict[str, list[int]] = {}
    for _name, fd in _bcc_tables(bpf.module):
        by_name.setdefault(syscalls.map_info(fd).name, []).append(fd)
    # Two tables cut to one kernel name are ambiguous: neither takes a previous map over.
    return {name: fds[0] for name, fds in by_name.items() if len(fds) == 1}


def _layouts(bpf: Any) -> dict[str, str]:
    """Each BCC table's layout digest, by kernel map name: the kernel's figures and BCC's JSON
    description of its key and value types."""
    from bcc.libbcc import lib as bcc_lib

    layouts = {}
    for name, fd in _bcc_tables(bpf.module):
        info = syscalls.map_info(fd)
        key = bcc_lib.bpf_table_key_desc(bpf.module, name.encode()) or b""
        leaf = bcc_lib.bpf_table_leaf_desc(bpf.module, name.encode()) or b""
        layouts[info.name] = map_reuse.digest(
            info, key.decode(errors="replace"), leaf.decode(errors="replace")
        )
    return layouts


def _map_sizes(bpf: Any, built: BuiltProgram) -> dict[str, int]:
    """Fills built.maps with the maps the loaded functions use, and returns the memory of every map
    of the program: those, and the tables BCC created that no loaded function uses."""
    sizes: dict[str, int] = {}
    tables: dict[int, int] = {}  # map id -> BCC's fd
    for name, fd in _bcc_tables(bpf.module):
        tables[syscalls.map_info(fd).id] = fd
        sizes[name] = map_memory.memlock(fd)
    map_ids = {map_id for fd in built.progs.values() for map_id in syscalls.prog_info(fd).map_ids}
    for map_id in sorted(map_ids):
        # BCC's own fds where it has one: opening a map by id takes CAP_SYS_ADMIN.
        map_fd = os.dup(tables[map_id]) if map_id in tables else _map_by_id(map_id)
        name = syscalls.map_info(map_fd).name  # the kernel's name (15 characters): the pin's
        if map_id not in tables:
            sizes[name or f"map-{map_id}"] = map_memory.memlock(map_fd)
        if name and not name.startswith("."):  # skip .rodata and friends
            built.maps[name] = map_fd
        else:
            os.close(map_fd)
    return sizes


def _map_by_id(map_id: int) -> int:
    """A map of the program that is no BCC table. In the sandbox, opening by id is refused (the
    guard, and no CAP_SYS_ADMIN): say so to the user rather than crash the worker."""
    try:
        return syscalls.map_fd_by_id(map_id)
    except KernelError as e:
        raise BuildFailure(
            "CompileError", f"the program uses a map BCC did not make (id {map_id}): {e}"
        ) from None
