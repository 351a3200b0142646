"""What the kernel tests share besides their fixtures (those are in conftest.py): the repo's paths, the
traffic counter they load, builds' requests, bpftool as an observer of the kernel, waiting for the
kernel to catch up, fresh interpreters of the project, and compile cgroups found and removed."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest

from node_agent.kernel.attach_types import PROG_TYPE_CGROUP_SKB, kernel_attach
from node_agent.kernel.backend import ProgramBuild
from node_agent.kernel.bcc_build import BuildFailure, build

REPO = Path(__file__).resolve().parents[2]
INCLUDE_DIR = REPO / "bpf" / "include"
PROGRAMS = REPO / "bpf" / "programs"
BPFFS = Path("/sys/fs/bpf")

EGRESS = kernel_attach({"type": "CgroupSkb", "direction": "Egress"})
COUNTER_FILE = PROGRAMS / "pod-traffic-counter.c"
COUNTER = ProgramBuild(COUNTER_FILE.read_text(), "count_packets", EGRESS)


def build_request(source: str, function: str = "allow", **extra: Any) -> dict[str, Any]:
    """What the agent asks a build for: a CgroupSkb program, the project's headers, no prelude."""
    return {
        "source": source,
        "function": function,
        "progType": PROG_TYPE_CGROUP_SKB,
        "attachType": -1,
        "includeDirs": [str(INCLUDE_DIR)],
        "cflags": [],
        "prelude": "",
        **extra,
    }


def refusal(request: dict[str, Any]) -> BuildFailure:
    """How a build refuses `request` (the test fails if it builds)."""
    with pytest.raises(BuildFailure) as failure:
        build(request)
    return failure.value


def bpftool(*args: str) -> Any:
    proc = subprocess.run(["bpftool", "-j", *args], capture_output=True, text=True, timeout=30, check=False)
    assert proc.returncode == 0, f"bpftool {' '.join(args)} failed: {proc.stderr}"
    # `cgroup show` prints nothing at all for a cgroup without programs.
    return json.loads(proc.stdout) if proc.stdout.strip() else []


def links_of(prog_id: int) -> list[dict[str, Any]]:
    return [link for link in bpftool("link", "show") if link.get("prog_id") == prog_id]


def wait_until(predicate: Callable[[], bool], what: str, timeout: float = 5.0) -> None:
    """Unpinned links and programs are freed after an RCU grace period, not at once: wait for it."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"still not {what} after {timeout}s")
        time.sleep(0.01)


def project_python(
    script: str,
    *args: object,
    input: str | None = None,
    timeout: float = 180,
    prefix: Sequence[str] = (),
) -> subprocess.CompletedProcess[str]:
    """Runs `script` in a fresh interpreter of the venv that imports the project (`prefix` goes
    before it, e.g. setpriv); its output as text, whatever its exit code."""
    return subprocess.run(
        [*prefix, sys.executable, "-c", script, *(str(arg) for arg in args)],
        input=input,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        cwd=REPO,
    )


def cgroups_named(prefix: str) -> list[Path]:
    """Every cgroup directory named with `prefix`, in v2 or in any v1 hierarchy."""
    root = Path("/sys/fs/cgroup")
    return sorted(root.glob(f"{prefix}*")) + sorted(root.glob(f"*/{prefix}*"))


def remove_cgroups(prefix: str) -> None:
    """Kills the processes of the cgroups named with `prefix` and removes them (a test's cleanup)."""
    for cgroup in cgroups_named(prefix):
        try:
            procs = (cgroup / "cgroup.procs").read_text().split()
        except FileNotFoundError:
            continue  # removed meanwhile: a worker that answered is reaped in the background
        for pid in procs:
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(pid), signal.SIGKILL)
        deadline = time.monotonic() + 5
        while cgroup.exists() and time.monotonic() < deadline:
            with contextlib.suppress(OSError):
                cgroup.rmdir()
            time.sleep(0.02)
