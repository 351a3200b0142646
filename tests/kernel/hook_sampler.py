"""Samples what a hook runs, in its own process (no shared GIL: it sees microsecond windows).

    python -m tests.kernel.hook_sampler cgroup <cgroup dir> <attach type> <seconds> <prog id>...
    python -m tests.kernel.hook_sampler link <inherited link fd> <seconds>

Prints "ready" once sampling runs, then one JSON line: the sample count and the distinct values seen,
in order (the bpfleet program ids on the cgroup hook, or the link's (program id, ifindex)).
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable

from node_agent.kernel import syscalls


def main(argv: list[str]) -> None:
    if argv[0] == "cgroup":
        fd = os.open(argv[1], os.O_RDONLY | os.O_DIRECTORY)
        attach_type, seconds, ours = int(argv[2]), float(argv[3]), {int(a) for a in argv[4:]}

        def sample() -> list[int]:
            return sorted(i for i in syscalls.prog_query(fd, attach_type) if i in ours)
    else:
        fd, seconds = int(argv[1]), float(argv[2])

        def sample() -> list[int]:
            info = syscalls.link_info(fd)
            return [info.prog_id, info.target_id]

    run(sample, seconds)


def run(sample: Callable[[], list[int]], seconds: float) -> None:
    seen: list[list[int]] = [sample()]
    count = 1
    print("ready", flush=True)
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        value = sample()
        count += 1
        if value != seen[-1]:
            seen.append(value)
    print(json.dumps({"samples": count, "transitions": seen}), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
