"""Compiles, verifies and pins one program, in a short-lived process of its own.

Run as `python -m node_agent.kernel.compile_worker` with a JSON request on stdin; prints one JSON
result on stdout. BCC brings LLVM into the process (~120 MB) and a hostile source may crash the
compiler, so the long-lived agent never compiles itself: this worker loads the program, pins the
program and its maps under the requested directory, and exits. The pins keep them alive.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

# BCC names the main source file like this in diagnostics; users know it as their program.
_BCC_MAIN_FILE = "/virtual/main.c"
USER_FILE_NAME = "program.c"


def _fail(reason: str, message: str) -> dict[str, Any]:
    return {"ok": False, "reason": reason, "message": message}


def _pin_program(fd: int, pin_dir: Path) -> dict[str, Any]:
    from node_agent.kernel import syscalls

    # bpffs refuses dots in names, hence the prefix.
    staging = pin_dir.with_name("staging-" + pin_dir.name)
    (staging / "maps").mkdir(parents=True, exist_ok=True)
    syscalls.obj_pin(fd, str(staging / "prog"))
    info = syscalls.prog_info(fd)
    maps = []
    for map_id in info.map_ids:
        map_fd = syscalls.map_fd_by_id(map_id)
        try:
            minfo = syscalls.map_info(map_fd)
            if minfo.name and not minfo.name.startswith("."):  # skip .rodata and friends
                syscalls.obj_pin(map_fd, str(staging / "maps" / minfo.name))
                maps.append(minfo.name)
        finally:
            os.close(map_fd)
    # Publishing by rename makes the version directory appear whole or not at all.
    staging.rename(pin_dir)
    return {"ok": True, "progId": info.id, "maps": sorted(maps)}


def compile_and_pin(request: dict[str, Any]) -> dict[str, Any]:
    from bcc import BPF

    from node_agent.kernel.stderr_capture import captured_stderr

    cflags = [f"-I{d}" for d in request["includeDirs"]] + list(request["cflags"])
    source = request["source"]
    if request.get("prelude"):
        # The line directive keeps diagnostics in the user's own line numbers.
        source = f'{request["prelude"]}\n#line 1 "{USER_FILE_NAME}"\n{source}'
    with captured_stderr() as stderr:
        try:
            bpf = BPF(text=source.encode(), cflags=cflags)
        except Exception:
            bpf = None
    if bpf is None:
        diagnostics = stderr.text.replace(_BCC_MAIN_FILE, USER_FILE_NAME)
        return _fail("CompileError", diagnostics or "the compiler failed without diagnostics")

    function = request["function"].encode()
    with captured_stderr() as stderr:
        try:
            fn = bpf.load_func(function, request["progType"], attach_type=request["attachType"])
            error = None
        except Exception as e:
            error = str(e)
    if error is not None:
        if error.startswith("Unknown program"):
            return _fail("FunctionNotFound", f"the source has no function named {request['function']!r}")
        return _fail("VerifierRejected", stderr.text or error)
    return _pin_program(fn.fd, Path(request["pinDir"]))


def main() -> None:
    request = json.load(sys.stdin)
    # BCC and clang may write to stdout; keep it clean for the one JSON result.
    result_fd = os.dup(1)
    os.dup2(2, 1)
    result = compile_and_pin(request)
    with os.fdopen(result_fd, "w") as out:
        json.dump(result, out)


if __name__ == "__main__":
    main()
