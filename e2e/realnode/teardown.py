"""Removes what the real node leaves on the host once its daemons are stopped: pods' processes and
cgroups (under kubelet's cgroupRoot only), mounts and files under its own directories, its bridge,
and the agent's pins under its own bpffs root. Nothing outside those is touched."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

from e2e.realnode.daemons import log
from e2e.realnode.kubelet import cgroup_root_dirs
from e2e.realnode.layout import AGENT_BPFFS_ROOT, Layout


def _kill_cgroup_tree(root: Path, timeout: float = 10.0) -> None:
    """SIGKILLs every process below root (cgroup.kill in v2, each cgroup.procs in v1)."""
    if not root.is_dir():
        return
    kill = root / "cgroup.kill"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pids = [int(p) for d, _, _ in os.walk(root) for p in _read(Path(d) / "cgroup.procs").split()]
        if not pids:
            return
        if kill.exists():
            kill.write_text("1")
        for pid in pids:
            try:
                os.kill(pid, 9)
            except ProcessLookupError:
                pass
        time.sleep(0.1)
    raise RuntimeError(f"processes are left in {root} after {timeout:.0f} s")


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""


def remove_cgroups() -> None:
    roots = cgroup_root_dirs()
    for root in roots:
        _kill_cgroup_tree(root)
    for root in roots:
        if root.is_dir():
            for directory, _, _ in os.walk(root, topdown=False):
                try:
                    os.rmdir(directory)
                except FileNotFoundError:
                    pass


def mounts_under(directory: Path, mountinfo: Path = Path("/proc/self/mountinfo")) -> list[str]:
    """Mount points at or below `directory`, deepest first."""
    prefix = str(directory).rstrip("/")
    found = []
    for line in mountinfo.read_text().splitlines():
        target = line.split()[4].replace("\\040", " ")
        if target == prefix or target.startswith(prefix + "/"):
            found.append(target)
    return sorted(set(found), key=len, reverse=True)


def unmount_and_remove(directory: Path) -> None:
    for _ in range(3):  # a lazy unmount can leave a parent mount for the next round
        for target in mounts_under(directory):
            if subprocess.run(["umount", target], capture_output=True).returncode != 0:
                subprocess.run(["umount", "-l", target], capture_output=True)
        if not mounts_under(directory):
            break
    left = mounts_under(directory)
    if left:
        raise RuntimeError(f"mounts are left under {directory}: {', '.join(left[:5])}")
    shutil.rmtree(directory, ignore_errors=True)


def remove_pins() -> None:
    shutil.rmtree(AGENT_BPFFS_ROOT, ignore_errors=True)


def remove_directories(layout: Layout) -> None:
    for directory in (layout.run, layout.lib):
        unmount_and_remove(directory)
    log("removed", dirs=f"{layout.run},{layout.lib}")
