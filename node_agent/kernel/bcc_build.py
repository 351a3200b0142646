"""What the compile worker does with BCC: compile a source, load its function, hand back the fds.

Runs inside the compile worker only (never in the agent): it imports bcc. The worker ships the
file descriptors returned here to the agent, which checks and pins them.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

# BCC names the main source file like this in diagnostics; users know it as their program.
BCC_MAIN_FILE = "/virtual/main.c"
USER_FILE_NAME = "program.c"


class BuildFailure(Exception):
    """The source cannot become a program; `reason` is one of bpfleet_api.reasons."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


@dataclass
class BuiltProgram:
    # Role -> program fd. "prog" is what the agent attaches; "user" is the user's own function
    # when "prog" is the agent's pod-filter entry point in front of it.
    progs: dict[str, int] = field(default_factory=dict)
    maps: dict[str, int] = field(default_factory=dict)  # map name -> fd


def build(request: dict[str, Any]) -> BuiltProgram:
    """Compiles and loads request["function"]; raises BuildFailure with what the user should read.

    Request fields: source, function, progType, attachType, includeDirs, cflags, prelude.
    """
    from bcc import BPF

    from node_agent.kernel import syscalls
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
        diagnostics = stderr.text.replace(BCC_MAIN_FILE, USER_FILE_NAME)
        raise BuildFailure("CompileError", diagnostics or "the compiler failed without diagnostics")

    function = request["function"].encode()
    with captured_stderr() as stderr:
        try:
            fn = bpf.load_func(function, request["progType"], attach_type=request["attachType"])
            error = None
        except Exception as e:
            error = str(e)
    if error is not None:
        if error.startswith("Unknown program"):
            raise BuildFailure(
                "FunctionNotFound", f"the source has no function named {request['function']!r}"
            )
        raise BuildFailure("VerifierRejected", stderr.text or error)
    built = BuiltProgram(progs={"prog": _dup(fn.fd)})
    for map_id in syscalls.prog_info(fn.fd).map_ids:
        map_fd = syscalls.map_fd_by_id(map_id)
        name = syscalls.map_info(map_fd).name
        if name and not name.startswith("."):  # skip .rodata and friends
            built.maps[name] = map_fd
        else:
            os.close(map_fd)
    return built


def _dup(fd: int) -> int:
    return os.dup(fd)  # BCC closes its own fds when the BPF object goes
