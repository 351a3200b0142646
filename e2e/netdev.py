"""Veth pairs in the host's network namespace, standing in for a node's own interfaces in tests.

Names get a random prefix, so that nothing else on the machine matches `<prefix>*`; every pair made
is deleted however the test ends."""

from __future__ import annotations

import secrets
import subprocess
from collections.abc import Callable, Iterator
from contextlib import contextmanager

# make(a, b) -> the two names
MakePair = Callable[[str, str], tuple[str, str]]


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True, timeout=30)


@contextmanager
def host_veths() -> Iterator[tuple[str, MakePair]]:
    """(prefix, make): make(a, b) adds the veth pair <prefix>a / <prefix>b, both ends up, and
    returns their names."""
    prefix = f"bpfl{secrets.token_hex(2)}"
    made: list[str] = []

    def make(a: str, b: str) -> tuple[str, str]:
        ends = prefix + a, prefix + b
        made.append(ends[0])
        ip("link", "add", ends[0], "type", "veth", "peer", "name", ends[1])
        for end in ends:
            ip("link", "set", end, "up")
        return ends

    try:
        yield prefix, make
    finally:
        for name in made:  # deleting one end deletes its pair; a test may have deleted it already
            subprocess.run(["ip", "link", "del", name], capture_output=True, check=False, timeout=30)
