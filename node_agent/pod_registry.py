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


def entries_from_pass(
    programs: Iterable[NodeProgram], pods: Iterable[Pod], result: PassResult
) -> dict[str, PodEntry]:
    """Every pod the pass saw, with what serves it: the version each selecting program serves now
    (the previous one while a new one fails or waits), and whether the pass found it attached."""
    reports: dict[tuple[str, str], ProgramReport] = {
        (r.namespace, r.name): r for r in result.reports if not r.detached
    }
    active = [p for p in programs if not p.deleting and p.scope == "Pods"]
    states: dict[tuple[str, str], set[str]] = {
        key: {p.uid for p in report.pods if p.state == ATTACHED} for key, report in reports.items()
    }
    entries: dict[str, PodEntry] = {}
    for pod in pods:
        entry = PodEntry(pod.uid, pod.namespace, pod.name, pod.qos_class, pod.phase == "Pending")
        for program in active:
            report = reports.get((program.namespace, program.name))
            if report is None or not program.selects(pod):
                continue
            if report.serving_version is None:
                if report.build_error is None:  # a failed build never comes: it holds nothing
                    entry.unserved.append(f"{program.ref.namespace}/{program.ref.name}")
                continue
            ref = ProgramRef(program.ref.namespace, program.ref.name, report.serving_version)
            entry.wanted[ref] = Wanted(ref, program.build.attach)
            if pod.uid in states[(program.namespace, program.name)]:
                entry.attached.add(ref)
        entries[pod.uid] = entry
    return entries


def merged(old: Mapping[str, PodEntry], new: dict[str, PodEntry]) -> dict[str, PodEntry]:
    """The new pass's entries, keeping what the fast path attached while that pass ran (the pass
    read the kernel before): a version still wanted and attached since stays attached."""
    for uid, entry in new.items():
        before = old.get(uid)
        if before is not None:
            entry.attached |= before.attached & entry.wanted.keys()
    return new
