"""podman as this project's image builds and container runs need it on hosts with and without
systemd, and with hybrid cgroups."""

from __future__ import annotations

import resource
import subprocess
from pathlib import Path

# podman lowers its own RLIMIT_NPROC to this before it starts runc, which cannot raise it back.
PODMAN_NPROC_CAP = 32768


def podman(*args: str, timeout: float = 1800, check: bool = True) -> subprocess.CompletedProcess[str]:
    base = ["podman"]
    if not Path("/run/systemd/system").is_dir():  # no systemd: podman manages cgroups and events itself
        base += ["--cgroup-manager=cgroupfs", "--events-backend=file"]
    result = subprocess.run([*base, *args], capture_output=True, text=True, timeout=timeout, check=False)
    if check and result.returncode != 0:
        raise RuntimeError(
            f"podman {' '.join(args[:3])} ... exited {result.returncode}: {result.stderr[-3000:]}"
        )
    return result


def run_options() -> list[str]:
    """runc (crun refuses a hybrid cgroup layout), with soft = hard limits no higher than ours:
    without CAP_SYS_RESOURCE, runc cannot set them any higher."""

    def limit(kind: int, cap: int) -> int:
        soft = resource.getrlimit(kind)[0]
        return cap if soft == resource.RLIM_INFINITY else min(soft, cap)

    nofile, nproc = limit(resource.RLIMIT_NOFILE, 1 << 20), limit(resource.RLIMIT_NPROC, PODMAN_NPROC_CAP)
    return [
        "--runtime",
        "runc",
        "--ulimit",
        f"nofile={nofile}:{nofile}",
        "--ulimit",
        f"nproc={nproc}:{nproc}",
    ]
