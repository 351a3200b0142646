"""Finds a uprobe's symbol in a binary of a pod, in a short-lived, sandboxed process of its own.

Run by the agent (symbol_lookup) as `python -m node_agent.kernel.symbol_worker --fd N --symbol S
--name PATH [--no-sandbox]`, with the binary open on fd N. The binary comes from the tenant's
image: its ELF headers are hostile input, so they are parsed (elf.py, pyelftools, within caps)
behind the same sandbox as compiles, never in the agent. Prints one JSON line: {"offset": N} or
{"error": "..."}.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from node_agent import elf
from node_agent.errors import ElfError, SandboxError
from node_agent.kernel import sandbox

# A symbol lookup needs far less than a compile.
LIMITS = sandbox.SandboxLimits(cpu_seconds=10, memory_bytes=512 << 20, file_bytes=1 << 20)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="symbol_worker")
    parser.add_argument("--fd", type=int, required=True)
    parser.add_argument("--symbol", required=True)
    parser.add_argument("--name", required=True)
    parser.add_argument("--no-sandbox", action="store_true")
    args = parser.parse_args(argv)
    try:
        if not args.no_sandbox:
            sandbox.enter([], LIMITS, keep=frozenset())  # reading a file needs no capability
        with os.fdopen(args.fd, "rb") as binary:
            reply: dict[str, object] = {"offset": elf.symbol_offset(binary, args.symbol, args.name)}
    except (ElfError, SandboxError) as e:
        reply = {"error": str(e)}
    print(json.dumps(reply), flush=True)
    sys.exit(0)


if __name__ == "__main__":
    main()
