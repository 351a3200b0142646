"""What the fast path must attach to each pod the moment its cgroup appears (pure bookkeeping).

A pass decides each pod's selection from the pod watch, also while the pod is Pending, and leaves
here, for every pod it saw, the programs serving it and which of them are attached. The fast path
then needs no pass to attach: it reads the pod's entry when kubelet makes the cgroup.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from node_agent.kernel.attach_types import PER_BINARY_FILTERED, PER_POD_NETDEV, KernelAttach
from node_agent.kernel.backend import ProgramRef
from node_agent.model import NodeProgram, Pod
from node_agent.reconcile import ATTACHED, PassResult, ProgramReport

# When the fast path can attach a program to a pod:
AT_CGROUP = "cgroup"  # as soon as the pod-level cgroup exists (cgroup links, the tracing filter)
AT_NETWORK = "network"  # once the pod has a process in its network namespace (Tc, Xdp)
# Only once a container runs the binary (uprobes) or a named container exists: left to the pass,
# which the fast path wakes when a container cgroup appears.
PASS_ONLY = "pass"


@dataclass(frozen=True)
class Wanted:
    """One program version to attach to one pod."""

    ref: ProgramRef
    attach: KernelAttach

    @property
    def when(self) -> str:
        if self.attach.container or self.attach.scope == PER_BINARY_FILTERED:
            return PASS_ONLY
        if self.attach.scope == PER_POD_NETDEV:
            return AT_NETWORK
        return AT_CGROUP


@dataclass
class PodEntry:
    uid: str
    namespace: str
    name: str
    qos_class: str | None
    pending: bool = True  # the pod's phase is Pending: its containers may not have started
    wanted: dict[ProgramRef, Wanted] = field(default_factory=dict)
    attached: set[ProgramRef] = field(default_factory=set)
    # Programs that select the pod but have no version to serve yet (waiting for their compile).
    unserved: list[str] = field(default_factory=list)

    def todo(self, moments: Iterable[str]) -> list[Wanted]:
        """What is still to attach, among what can be done at these moments."""
        moments = set(moments)
        return [w for ref, w in sorted(self.wanted.items()) if ref not in self.attached and w.when in moments]

    def missing(self) -> list[str]:
        """What a container start waits for: programs not attached yet that can be attached before
        it (a uprobe needs the container's own process, so it never holds a start), and programs
        still compiling."""
        waiting = [
            f"{w.ref.namespace}/{w.ref.name}"
            for ref, w in sorted(self.wanted.items())
            if ref not in self.attached and w.when != PASS_ONLY
        ]
        return waiting + [f"{p} (compiling)" for p in self.unserved]

    def ready(self) -> bool:
        return not self.missing()


@dataclass(frozen=True)
class Serving:
    """What one program serves after a pass: a version, or none yet (compiling) or ever (failed)."""

    program: NodeProgram
    ref: ProgramRef | None
    failed: bool = False


def serving_from_pass(programs: Iterable[NodeProgram], result: PassResult) -> list[Serving]:
    """The version each program for pods serves now: the desired one, or the previous one while a
    new one fails or waits."""
    reports: dict[tuple[str, str], ProgramReport] = {(r.namespace, r.name): r for r in result.reports}
    serving = []
    for program in programs:
        report = reports.get((program.namespace, program.name))
        if program.scope != "Pods" or report is None:
            continue
        if report.serving_version is None:
            serving.append(Serving(program, None, failed=report.build_error is not None))
            continue
        ref = ProgramRef(program.ref.namespace, program.ref.name, report.serving_version)
        serving.append(Serving(program, ref))
    return serving


def entry_for(
    pod: Pod, serving: Iterable[Serving], attached: Mapping[tuple[str, str], set[str]] | None = None
) -> PodEntry:
    """The pod's entry: every program selecting it, and (from a pass) whether it is attached."""
    entry = PodEntry(pod.uid, pod.namespace, pod.name, pod.qos_class, pod.phase == "Pending")
    for item in serving:
        program = item.program
        if not program.selects(pod):
            continue
        if item.ref is None:
            if not item.failed:  # a failed build never comes: it holds nothing
                entry.unserved.append(f"{program.ref.namespace}/{program.ref.name}")
            continue
        entry.wanted[item.ref] = Wanted(item.ref, program.build.attach)
        if attached is not None and pod.uid in attached.get((program.namespace, program.name), set()):
            entry.attached.add(item.ref)
    return entry


def entries_from_pass(
    programs: Iterable[NodeProgram], pods: Iterable[Pod], result: PassResult
) -> dict[str, PodEntry]:
    """Every pod the pass saw, with what serves it and whether the pass found it attached."""
    attached = {(r.namespace, r.name): {p.uid for p in r.pods if p.state == ATTACHED} for r in result.reports}
    serving = serving_from_pass(programs, result)
    return {pod.uid: entry_for(pod, serving, attached) for pod in pods}


def merged(old: Mapping[str, PodEntry], new: dict[str, PodEntry]) -> dict[str, PodEntry]:
    """The new pass's entries, keeping what the fast path attached while that pass ran (the pass
    read the kernel before): a version still wanted and attached since stays attached."""
    for uid, entry in new.items():
        before = old.get(uid)
        if before is not None:
            entry.attached |= before.attached & entry.wanted.keys()
    return new
