"""Carrying a program's maps over to its next version, so that counters do not reset on an update.

A map of the new version whose layout is unchanged is the previous version's map itself, not a copy:
the two versions share it while the link moves from one to the other (link_update), so no update
written by either is lost. The layout is what the program and its readers assume of the map: its
name, type, key and value sizes, max_entries and flags as the kernel has them, and the key and value
types as BCC describes them (JSON). Its digest is pinned beside the map, at
`<version>/layouts/<name>-<digest>`, so the next version finds it after an agent restart too.

How: the agent hands the previous version's maps to the compile worker (SCM_RIGHTS, the other way);
the worker, once BCC has created its fresh maps and before any function is loaded, puts the old
map on the fd number of the new one (dup2). BCC's instructions carry that fd number, so the loaded
program uses the old map; the verifier checks the program against it as against any map.

Only data maps move, and only between versions of one program: never the agent's own maps
(bpfleet_*: the pod filter and its tail-call slot), never program arrays or event outputs, whose
contents belong to one version. The agent decides which maps were kept from the map ids it
receives, not from what the worker says.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from node_agent import errors
from node_agent.kernel import syscalls

LAYOUTS_DIR = "layouts"
# The record of what a version took over (kept) and what started empty (reset), for its status.
KEPT_DIR, RESET_DIR = "kept", "reset"
RESERVED_PREFIX = "bpfleet_"
# Hash, array, per-CPU hash and array, LRU hash and per-CPU LRU hash, LPM trie, queue, stack: plain
# data, whose contents mean the same to the next version when the layout is the same.
REUSABLE_TYPES = frozenset({1, 2, 5, 6, 9, 10, 11, 22, 23})
MAX_CARRIED = 32  # maps handed to one compile: well below the worker's fd limit
_DIGEST = re.compile(r"[0-9a-f]{64}")
_LAYOUT_PIN = re.compile(r"(?P<name>[A-Za-z0-9_]{1,15})-(?P<digest>[0-9a-f]{64})")


def digest(info: syscalls.MapInfo, key_desc: str, leaf_desc: str) -> str:
    """The layout of one map as a hex digest; equal digests mean the new version may use the old map."""
    layout = [
        info.name,
        info.type,
        info.key_size,
        info.value_size,
        info.max_entries,
        info.flags,
        key_desc,
        leaf_desc,
    ]
    return hashlib.sha256(json.dumps(layout).encode()).hexdigest()


def is_digest(value: object) -> bool:
    return isinstance(value, str) and bool(_DIGEST.fullmatch(value))


def reusable(info: syscalls.MapInfo) -> bool:
    return info.type in REUSABLE_TYPES and not info.name.lower().startswith(RESERVED_PREFIX)


def layout_pin_name(name: str, layout: str) -> str:
    return f"{name}-{layout}"


def pinned_layouts(version_dir: Path) -> dict[str, str]:
    """Map name -> layout digest, as the version's pins record them."""
    found: dict[str, str] = {}
    for pin in sorted((version_dir / LAYOUTS_DIR).glob("*")):
        match = _LAYOUT_PIN.fullmatch(pin.name)
        if match:
            found[match["name"]] = match["digest"]
    return found


def carried_record(version_dir: Path) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(kept, reset) as the version's pins record them."""
    kept = tuple(sorted(p.name for p in (version_dir / KEPT_DIR).glob("*")))
    return kept, tuple(sorted(p.name for p in (version_dir / RESET_DIR).glob("*")))


@dataclass
class Carried:
    """The previous version's reusable maps, opened by the agent: name -> (layout digest, fd)."""

    maps: dict[str, tuple[str, int]] = field(default_factory=dict)
    ids: dict[str, int] = field(default_factory=dict)  # name -> map id, to tell kept from reset
    names: frozenset[str] = frozenset()  # every map the previous version had

    def close(self) -> None:
        for _layout, fd in self.maps.values():
            with contextlib.suppress(OSError):
                os.close(fd)
        self.maps.clear()

    def kept_and_reset(self, received: dict[str, int]) -> tuple[tuple[str, ...], tuple[str, ...]]:
        """Which of the new version's maps (name -> fd) are the previous ones, and which of those it
        had start empty: judged from the map ids."""
        kept, reset = [], []
        for name, fd in sorted(received.items()):
            if name in self.ids and syscalls.map_info(fd).id == self.ids[name]:
                kept.append(name)
            elif name in self.names:
                reset.append(name)
        return tuple(kept), tuple(reset)


def carried_from(version_dir: Path | None) -> Carried:
    """Opens the maps of the version at version_dir that a next version may take over."""
    carried = Carried()
    if version_dir is None:
        return carried
    maps_dir = version_dir / "maps"
    carried.names = frozenset(p.name for p in maps_dir.glob("*"))
    try:
        for name, layout in sorted(pinned_layouts(version_dir).items())[:MAX_CARRIED]:
            try:
                fd = syscalls.obj_get(str(maps_dir / name))
            except errors.KernelError:
                continue  # a layout without its map: nothing to carry
            info = syscalls.map_info(fd)
            if info.name != name or not reusable(info):
                os.close(fd)
                continue
            carried.maps[name], carried.ids[name] = (layout, fd), info.id
    except BaseException:
        carried.close()
        raise
    return carried


def adopt(tables: dict[str, int], layouts: dict[str, str], previous: dict[str, tuple[str, int]]) -> list[str]:
    """In the worker: puts each previous map on the fd of the new table of the same name and layout
    (tables: kernel map name -> BCC's fd; layouts: name -> the new table's digest). Returns the names
    taken over; the fds in `previous` stay the caller's."""
    kept = []
    for name, fd in sorted(tables.items()):
        old = previous.get(name)
        if old is None or old[0] != layouts.get(name):
            continue
        info = syscalls.map_info(old[1])
        if info.name != name or not reusable(info):
            continue
        os.dup2(old[1], fd)  # BCC's fresh map goes; the fd number the instructions carry stays
        kept.append(name)
    return kept
