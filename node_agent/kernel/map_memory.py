"""The memory a program's maps take, by the kernel's own figure, against the program's cap.

A map's memory is what the kernel charges for it: the `memlock:` line of its fdinfo. In the compile
sandbox /proc is the worker's own, so /proc/self/fdinfo still shows the worker's fds.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

DEFAULT_MAX_MAP_BYTES = 64 * 1024 * 1024  # the agent's default cap, when a request names none
_SHOWN = 3  # the largest maps a refusal names


def cap(limit: int | None) -> int:
    """A request's or build's cap in bytes: 0 or absent means the default."""
    return int(limit or 0) or DEFAULT_MAX_MAP_BYTES


def memlock(fd: int, proc: Path = Path("/proc")) -> int:
    """The bytes the kernel charges for the map behind fd."""
    for line in (proc / "self" / "fdinfo" / str(fd)).read_text().splitlines():
        key, _, value = line.partition(":")
        if key == "memlock":
            return int(value.strip())
    raise ValueError(f"fd {fd} has no memlock line: not a BPF map")


def human(size: int) -> str:
    """Bytes as people read them: 800.0 MiB, 12.0 KiB, 100 B."""
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if size >= scale:
            return f"{size / scale:.1f} {unit}"
    return f"{size} B"


def over_cap(sizes: Mapping[str, int], limit: int) -> str | None:
    """None when the maps fit in `limit` bytes, else what the user reads: the largest maps, the
    total and the limit."""
    total = sum(sizes.values())
    if total <= limit:
        return None
    largest = sorted(sizes.items(), key=lambda item: (-item[1], item[0]))
    allowed = f"this program's maps may use {human(limit)} in all"
    if len(largest) == 1:
        name, size = largest[0]
        return f"map {name} needs {human(size)}; {allowed}"
    shown = ", ".join(f"{name} {human(size)}" for name, size in largest[:_SHOWN])
    more = f" and {len(largest) - _SHOWN} more" if len(largest) > _SHOWN else ""
    return f"maps {shown}{more} need {human(total)} in all; {allowed}"
