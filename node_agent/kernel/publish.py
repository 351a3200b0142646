"""Pins what a compile worker loaded as one program version, which appears whole or not at all.

    <version>/prog          role "prog": what gets attached
    <version>/prog-<role>   every other role (e.g. "user", the user's own function behind the
                            agent's pod-filter entry point)
    <version>/maps/<name>   the maps
    <version>/layouts/<name>-<digest>   the same maps again, named by their layout (map_reuse)
    <version>/kept/<name>, reset/<name> the maps taken over from the previous version, and those
                            of the same name that start empty (its layout changed)

Everything is pinned under a staging directory next to the version and renamed into place; on any
failure the staging directory is removed.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from node_agent import fault_points
from node_agent.kernel import map_reuse, syscalls
from node_agent.kernel.compile_runner import Received

STAGING_PREFIX = "staging-"  # bpffs refuses dots in names, hence a prefix


def staging_dir(pin_dir: Path) -> Path:
    return pin_dir.with_name(STAGING_PREFIX + pin_dir.name)


def prog_pin_name(role: str) -> str:
    return "prog" if role == "prog" else f"prog-{role}"


def publish(
    received: Received, pin_dir: Path, kept: tuple[str, ...] = (), reset: tuple[str, ...] = ()
) -> int:
    """Pins the programs and maps at `pin_dir`; returns the id of the "prog" program."""
    staging = staging_dir(pin_dir)
    shutil.rmtree(staging, ignore_errors=True)
    try:
        (staging / "maps").mkdir(parents=True)
        for role, fd in received.progs.items():
            syscalls.obj_pin(fd, str(staging / prog_pin_name(role)))
        for name, fd in received.maps.items():
            syscalls.obj_pin(fd, str(staging / "maps" / name))
        (staging / map_reuse.LAYOUTS_DIR).mkdir()
        for name, layout in received.layouts.items():
            if map_reuse.reusable(syscalls.map_info(received.maps[name])):  # what a next version may take
                pin = staging / map_reuse.LAYOUTS_DIR / map_reuse.layout_pin_name(name, layout)
                syscalls.obj_pin(received.maps[name], str(pin))
        for kind, names in ((map_reuse.KEPT_DIR, kept), (map_reuse.RESET_DIR, reset)):
            for name in names:
                (staging / kind).mkdir(exist_ok=True)
                syscalls.obj_pin(received.maps[name], str(staging / kind / name))
        prog_id = syscalls.prog_info(received.progs["prog"]).id
        fault_points.reached("publish")
        staging.rename(pin_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return prog_id
