"""The kernel actions a plan is made of; the executor runs them in order.

Each action carries the report it answers to: the executor marks a pod or target Failed when its
attach fails, and records a failed detach or unload in its program's report (retried next pass).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from node_agent.kernel.attach_types import KernelAttach
from node_agent.kernel.backend import ProgramRef
from node_agent.reports import PodReport, ProgramReport, TargetReport


@dataclass(frozen=True)
class Attach:
    ref: ProgramRef
    pod_uid: str
    pod_name: str
    cgroup: Path
    attach: KernelAttach
    report: PodReport
    container_id: str = ""


@dataclass(frozen=True)
class Update:
    """Moves a pod's live link of an older version to `then.ref` in place; when the kernel refuses,
    `then` attaches the new version beside it (the old one is unloaded later in the plan)."""

    old: ProgramRef
    then: Attach


@dataclass(frozen=True)
class Detach:
    ref: ProgramRef
    pod_uid: str
    program: ProgramReport | None


@dataclass(frozen=True)
class AttachNode:
    ref: ProgramRef
    target: str
    attach: KernelAttach
    report: TargetReport


@dataclass(frozen=True)
class DetachNode:
    ref: ProgramRef
    target: str
    program: ProgramReport | None


@dataclass(frozen=True)
class Unload:
    ref: ProgramRef
    program: ProgramReport | None


Action = Attach | Update | Detach | AttachNode | DetachNode | Unload
