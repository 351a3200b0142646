"""The agent's side of the symbol worker: a uprobe symbol's file offset, found outside the agent."""

from __future__ import annotations

import json
import os
import subprocess

from node_agent.errors import ElfError
from node_agent.kernel import syscalls
from node_agent.kernel.compile_runner import worker_env

WORKER_MODULE = "node_agent.kernel.symbol_worker"
TIMEOUT_SECONDS = 30.0


def symbol_offset(file_fd: int, symbol: str, name: str, python: str, sandbox: bool = True) -> int:
    """The file offset of `symbol` in the binary `file_fd` stands for (an O_PATH fd will do);
    `name` is its path for messages. Raises ElfError (an AttachFailed) for the user."""
    # Reopened through the fd, so that no path is looked up again, in or out of the pod.
    with syscalls.closing_fd(os.open(f"/proc/self/fd/{file_fd}", os.O_RDONLY | os.O_CLOEXEC)) as readable:
        return _run_worker(readable, symbol, name, python, sandbox)


def _run_worker(file_fd: int, symbol: str, name: str, python: str, sandbox: bool) -> int:
    argv = [python, "-m", WORKER_MODULE, "--fd", str(file_fd), "--symbol", symbol, "--name", name]
    if not sandbox:
        argv.append("--no-sandbox")
    try:
        proc = subprocess.run(
            argv,
            pass_fds=(file_fd,),
            capture_output=True,
            text=True,
            timeout=TIMEOUT_SECONDS,
            env=worker_env(),
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise ElfError(f"reading the symbols of {name} took longer than {TIMEOUT_SECONDS:.0f}s") from None
    lines = proc.stdout.strip().splitlines()
    try:
        reply = json.loads(lines[-1])
    except (IndexError, json.JSONDecodeError):
        tail = " ".join(proc.stderr.strip().splitlines()[-3:])
        raise ElfError(f"reading the symbols of {name} failed (exit {proc.returncode}): {tail}") from None
    if "error" in reply:
        raise ElfError(str(reply["error"]))
    return int(reply["offset"])
