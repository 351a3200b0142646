"""What the kernel and bpffs hold, counted with bpftool and the pin tree: the judge of the fault and
soak suites. Everything is read from the kernel, never from bpfleet's own reports."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from e2e.kube import bpftool
from e2e.podsim import find_cgroup2_mount


def programs(name: str | None = None) -> list[dict[str, Any]]:
    """Loaded programs (all, or those of one kernel name: a function's, cut to 15 characters)."""
    return [p for p in bpftool("prog", "show") or [] if name is None or p.get("name") == name[:15]]


def maps(name: str | None = None) -> list[dict[str, Any]]:
    return [m for m in bpftool("map", "show") or [] if name is None or m.get("name") == name[:15]]


def links(prog_ids: set[int] | None = None) -> list[dict[str, Any]]:
    return [lk for lk in bpftool("link", "show") or [] if prog_ids is None or lk.get("prog_id") in prog_ids]


def compile_cgroups() -> set[Path]:
    """Every compile worker's cgroup on this host, in cgroup v2 and in each v1 hierarchy."""
    roots = [find_cgroup2_mount(), *Path("/sys/fs/cgroup").glob("*")]
    return {c for root in roots if root.is_dir() for c in root.glob("bpfleet-compile-*")}


def pinned_id(kind: str, pin: Path) -> int | None:
    """The id of the program, map or link pinned at `pin`, or None."""
    try:
        return int(bpftool(kind, "show", "pinned", str(pin))["id"])
    except Exception:
        return None


def pins(root: Path) -> list[Path]:
    """Every file below a bpffs directory: pinned programs, maps and links."""
    return sorted(p for p in root.rglob("*") if p.is_file()) if root.exists() else []


def process_tree(pid: int) -> set[int]:
    """pid and its descendants, now."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    found, todo = set(), [pid]
    while todo:
        current = todo.pop()
        found.add(current)
        todo.extend(children.get(current, []))
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


@dataclass(frozen=True)
class ProcessFigures:
    rss_kib: int
    fds: int


def process_figures(pid: int) -> ProcessFigures:
    """A process's resident memory and open file descriptors."""
    rss = 0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            rss = int(line.split()[1])
    return ProcessFigures(rss, len(os.listdir(f"/proc/{pid}/fd")))
