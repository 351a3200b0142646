"""What a reconcile pass found, program by program: the agent turns it into status and metrics."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from node_agent.errors import ProgramBuildError
from node_agent.kernel.backend import LoadedProgram

ATTACHED = "Attached"
WAITING = "Waiting"
FAILED = "Failed"


class CgroupResolver(Protocol):
    kubelet_root: Path

    def find(self, uid: str, qos_class: str | None) -> Path | None: ...


class FeatureCheck(Protocol):
    def unsupported(self, api_type: str, bytecode: bool = False) -> str | None: ...


@dataclass
class PodReport:
    name: str
    uid: str
    state: str
    reason: str = ""
    message: str = ""
    namespace: str = ""  # only for ClusterEbpfPrograms: their pods are of many namespaces


@dataclass
class TargetReport:
    """A host-level target of a scope-Node program: NODE_TARGET, or a host interface's name."""

    name: str
    state: str
    reason: str = ""
    message: str = ""


@dataclass
class ProgramReport:
    """What one pass found for one program of the node; the agent turns it into its status entry."""

    namespace: str
    name: str
    generation: int
    version: str
    loaded: LoadedProgram | None = None
    serving_version: str | None = None  # differs from version while a failed rollout keeps the old one
    build_error: ProgramBuildError | None = None
    pods: list[PodReport] = field(default_factory=list)
    # Waiting for its turn to compile, or compiling (0): how many builds are ahead of it on this node.
    queued: int | None = None
    scope: str = "Pods"
    attach_type: str = ""
    target: str = ""  # what scope Node hooks: the event, or the interface name or pattern
    targets: list[TargetReport] = field(default_factory=list)  # scope Node only
    # Detaches and unloads of this program that failed this pass (reason, message): retried.
    cleanup_failures: list[tuple[str, str]] = field(default_factory=list)


@dataclass
class PassResult:
    reports: list[ProgramReport]
    # Pods selected but not attached yet (cgroup not there yet): look again soon.
    waiting: bool
    # Pods whose attachment failed: worth another try, but not at the pace of a pod about to start.
    failed: bool = False
    # Versions waiting for or in the compile pool; the pool wakes the agent when one ends.
    queued: bool = False
    # Programs on host interfaces by pattern: interfaces that appear are attached at the next pass.
    follows_interfaces: bool = False
