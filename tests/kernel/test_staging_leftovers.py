"""Staging directories a killed agent left half-written are removed by the first loaded(), with the
program and namespace directories they leave empty; other programs' directories stay."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest

from node_agent.kernel.bpffs import BpffsBackend
from node_agent.kernel.publish import STAGING_PREFIX

pytestmark = pytest.mark.kernel


def _pinned_map(pin: Path) -> int:
    """A real map pinned at `pin`, as a publish cut short would leave; returns its id."""
    pin.parent.mkdir(parents=True, exist_ok=True)
    create = ["bpftool", "map", "create", str(pin), "type", "hash", "key", "4", "value", "4"]
    subprocess.run([*create, "entries", "8", "name", "leftover"], check=True)
    shown = subprocess.run(
        ["bpftool", "-j", "map", "show", "pinned", str(pin)], capture_output=True, check=True
    )
    return int(json.loads(shown.stdout)["id"])


def _map_exists(map_id: int) -> bool:
    shown = subprocess.run(["bpftool", "map", "show", "id", str(map_id)], capture_output=True, check=False)
    return shown.returncode == 0


def test_loaded_removes_staging_pins_and_the_directories_they_leave_empty(bpffs_root: Path):
    alone = bpffs_root / "team-a" / "ghost" / f"{STAGING_PREFIX}0000000000000001"
    neighbour = bpffs_root / "team-b" / "other" / f"{STAGING_PREFIX}0000000000000002"
    kept = bpffs_root / "team-b" / "kept"  # some other program's directory, not to be touched
    kept.mkdir(parents=True)
    map_ids = [_pinned_map(alone / "maps" / "m"), _pinned_map(neighbour / "maps" / "m")]

    assert BpffsBackend(bpffs_root).loaded() == {}

    assert sorted(p.relative_to(bpffs_root).as_posix() for p in bpffs_root.rglob("*")) == [
        "team-b",
        "team-b/kept",
    ]
    # With their last pin gone the kernel frees the maps (after an RCU grace period).
    deadline = time.monotonic() + 5
    while any(_map_exists(m) for m in map_ids) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(_map_exists(m) for m in map_ids)
