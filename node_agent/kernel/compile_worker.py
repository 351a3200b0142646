"""Compiles, verifies and pins one program, in a short-lived process of its own.

Run as `python -m node_agent.kernel.compile_worker` with a JSON request on stdin; prints one JSON
result on stdout. BCC brings LLVM into the process (~120 MB) and a hostile source may crash the
compiler, so the long-lived agent never compiles itself: this worker builds the program
(bcc_build), pins the program and its maps under the requested directory, and exits. The pins keep
them alive.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

from node_agent.kernel.bcc_build import USER_FILE_NAME, BuildFailure, BuiltProgram, build

__all__ = ["USER_FILE_NAME", "compile_and_pin", "main"]


def _fail(reason: str, message: str) -> dict[str, Any]:
    return {"ok": False, "reason": reason, "message": message}


def _pin_program(built: BuiltProgram, pin_dir: Path) -> dict[str, Any]:
    from node_agent.kernel import syscalls

    # bpffs refuses dots in names, hence the prefix.
    staging = pin_dir.with_name("staging-" + pin_dir.name)
    (staging / "maps").mkdir(parents=True, exist_ok=True)
    prog_fd = built.progs["prog"]
    syscalls.obj_pin(prog_fd, str(staging / "prog"))
    info = syscalls.prog_info(prog_fd)
    for name, map_fd in built.maps.items():
        syscalls.obj_pin(map_fd, str(staging / "maps" / name))
    # Publishing by rename makes the version directory appear whole or not at all.
    staging.rename(pin_dir)
    return {"ok": True, "progId": info.id, "maps": sorted(built.maps)}


def compile_and_pin(request: dict[str, Any]) -> dict[str, Any]:
    try:
        built = build(request)
    except BuildFailure as e:
        return _fail(e.reason, e.message)
    return _pin_program(built, Path(request["pinDir"]))


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
