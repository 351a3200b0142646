"""The plan of one pass: from what should run (the node's EbpfNodeState entries, pods) and what runs
(the observed model), the reports and the list of kernel actions that close the gap. No side
effects: it reads the model and looks pod cgroups up, and changes nothing.

Order matters and is kept: per program, detaches first, then moves and attaches; the unloads of
versions nobody serves come last, after the links that move out of them have moved.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from bpfleet_api import reasons
from node_agent.actions import Action, Attach, AttachNode, Detach, DetachNode, Unload, Update
from node_agent.errors import ProgramBuildError
from node_agent.kernel.attach_types import (
    NODE_NETDEV,
    NODE_WIDE,
    PER_POD_CGROUP,
    PER_POD_NETDEV,
    KernelAttach,
)
from node_agent.kernel.backend import NODE_TARGET, ProgramRef
from node_agent.model import NodeProgram, Pod
from node_agent.observed import Observed
from node_agent.reports import ATTACHED, FAILED, WAITING, PodReport, ProgramReport, TargetReport

FindCgroup = Callable[[Pod], Path | None]


@dataclass(frozen=True)
class BuildState:
    """What the compiles say: versions that failed, where the waiting ones stand (0: compiling),
    and versions just built that nobody wants any more (never served, only unloaded)."""

    failures: Mapping[ProgramRef, ProgramBuildError] = field(default_factory=dict)
    waiting: Mapping[ProgramRef, int] = field(default_factory=dict)
    unwanted: frozenset[ProgramRef] = frozenset()


@dataclass
class Plan:
    reports: list[ProgramReport]
    actions: list[Action]
    serving: set[ProgramRef]
    follows_interfaces: bool = False


def plan(
    programs: Iterable[NodeProgram],
    pods: Iterable[Pod],
    observed: Observed,
    builds: BuildState,
    find_cgroup: FindCgroup,
    kubelet_root: Path,
    held: Iterable[tuple[str, str]] = (),
    hooks: Mapping[ProgramRef, KernelAttach] | None = None,
) -> Plan:
    """`held`: programs whose entry could not be read; what runs of them is left alone.
    `hooks`: the hook each version was served on since the agent started (a link moves in place
    only between versions of the same hook)."""
    programs, pods = list(programs), list(pods)
    held_set = set(held) - {p.ref.program for p in programs}
    result = Plan([], [], {ref for ref in observed.loaded if ref.program in held_set})
    unloads: list[Action] = []
    by_program: dict[tuple[str, str], ProgramReport] = {}
    hooks = hooks or {}
    # Each program's loaded versions, looked up once: a pass of 50 programs asks 50 times.
    versions: dict[tuple[str, str], list[ProgramRef]] = {}
    for loaded_ref in sorted(observed.loaded):
        versions.setdefault(loaded_ref.program, []).append(loaded_ref)
    for program in programs:
        report = ProgramReport(
            program.namespace,
            program.name,
            program.generation,
            program.ref.version,
            scope=program.scope,
            attach_type=program.attach_type,
            target=program.build.attach.target,
        )
        result.reports.append(report)
        by_program[program.ref.program] = report
        ref = _serving(program, observed, builds, report)
        if ref is None:
            continue
        result.serving.add(ref)
        report.loaded, report.serving_version = observed.loaded[ref], ref.version
        if program.scope == "Node":
            _plan_node(program, ref, report, observed, result.actions)
        else:
            older = [r for r in versions.get(ref.program, ()) if r != ref]
            moves = _moves(program, older, pods, observed, hooks) if ref == program.ref and older else {}
            _plan_pods(program, ref, pods, report, observed, moves, find_cgroup, kubelet_root, result.actions)
    for ref in sorted(set(observed.loaded) - result.serving):
        unloads.append(Unload(ref, by_program.get(ref.program)))
    result.actions += unloads
    result.follows_interfaces = any(p.build.attach.scope == NODE_NETDEV for p in programs)
    return result


def _serving(
    program: NodeProgram, observed: Observed, builds: BuildState, report: ProgramReport
) -> ProgramRef | None:
    """The version to serve: the desired one, or, while it cannot be built or waits for the pool,
    the one running before (never one built after nobody wanted it)."""
    ref = program.ref
    if ref in observed.loaded:
        return ref
    report.build_error = builds.failures.get(ref)
    if report.build_error is None:
        report.queued = builds.waiting.get(ref, 0)
    loaded = observed.loaded
    previous = [r for r in loaded if r.program == ref.program and r not in builds.unwanted]
    return max(previous, key=lambda r: loaded[r].prog_id) if previous else None


def _moves(
    program: NodeProgram,
    old_versions: list[ProgramRef],
    pods: list[Pod],
    observed: Observed,
    hooks: Mapping[ProgramRef, KernelAttach],
) -> dict[str, ProgramRef]:
    """Pod UID -> the older version (of `old_versions`, the program's others loaded, sorted) whose
    live link on that pod moves to this version in place: no gap, no overlap, same link. Per-pod
    cgroup and interface links only (perf-event links of tracing cannot be updated), and only
    between versions seen on the same hook."""
    new, attach = program.ref, program.build.attach
    if attach.scope not in (PER_POD_CGROUP, PER_POD_NETDEV):
        return {}
    selected = {pod.uid for pod in pods if program.selects(pod)}
    current = observed.attachments(new)
    moves: dict[str, ProgramRef] = {}
    for old in old_versions:
        if hooks.get(old, attach) != attach:
            continue  # another hook or interface: a link there is not this version's to take
        for uid, link in sorted(observed.attachments(old).items()):
            if uid in selected and link.live and not (uid in current and current[uid].live):
                moves.setdefault(uid, old)
    return moves


def _plan_pods(
    program: NodeProgram,
    ref: ProgramRef,
    pods: list[Pod],
    report: ProgramReport,
    observed: Observed,
    moves: Mapping[str, ProgramRef],
    find_cgroup: FindCgroup,
    kubelet_root: Path,
    actions: list[Action],
) -> None:
    selected = [pod for pod in pods if program.selects(pod)]
    attachments = observed.attachments(ref)
    wanted = {pod.uid for pod in selected}
    actions += [Detach(ref, uid, report) for uid in sorted(set(attachments) - wanted)]
    for pod in selected:
        current = attachments.get(pod.uid)
        if current is not None and current.live:
            pod_report = PodReport(pod.name, pod.uid, ATTACHED)
        else:
            pod_report, action = _attach_pod(program, ref, pod, find_cgroup, kubelet_root)
            if action is not None:
                old = moves.get(pod.uid)
                actions.append(Update(old, action) if old is not None else action)
        if program.cluster:
            pod_report.namespace = pod.namespace
        report.pods.append(pod_report)


def _attach_pod(
    program: NodeProgram, ref: ProgramRef, pod: Pod, find_cgroup: FindCgroup, kubelet_root: Path
) -> tuple[PodReport, Attach | None]:
    cgroup = find_cgroup(pod)
    if cgroup is None:
        if pod.phase == "Pending":
            why = "pod cgroup not created yet"
            return PodReport(pod.name, pod.uid, WAITING, reasons.POD_CGROUP_NOT_FOUND, why), None
        message = (
            f"no cgroup v2 directory for pod UID {pod.uid} under {kubelet_root}; if kubelet keeps pods "
            "elsewhere, set the agent's BPFLEET_KUBELET_CGROUP_ROOT (agent.kubeletCgroupRoot)"
        )
        return PodReport(pod.name, pod.uid, FAILED, reasons.POD_CGROUP_NOT_FOUND, message), None
    container = program.build.attach.container
    container_id = pod.containers.get(container, "") if container else ""
    if container and not container_id:
        state = WAITING if pod.phase == "Pending" else FAILED
        message = f"the pod has no started container {container}"
        return PodReport(pod.name, pod.uid, state, reasons.ATTACH_FAILED, message), None
    # Attached unless the executor finds otherwise.
    pod_report = PodReport(pod.name, pod.uid, ATTACHED)
    action = Attach(ref, pod.uid, pod.name, cgroup, program.build.attach, pod_report, container_id)
    return pod_report, action


def _plan_node(
    program: NodeProgram, ref: ProgramRef, report: ProgramReport, observed: Observed, actions: list[Action]
) -> None:
    """Scope Node: the program's event for the whole node, or every host interface whose name
    matches the pattern now (ones that vanished are dropped, new ones attached)."""
    attach = program.build.attach
    if attach.scope == NODE_WIDE:
        wanted = [NODE_TARGET]
    else:
        interfaces = observed.node_interfaces()
        wanted = sorted(name for name in interfaces if fnmatch.fnmatchcase(name, attach.target))
    current = observed.node_attachments(ref)
    actions += [DetachNode(ref, target, report) for target in sorted(set(current) - set(wanted))]
    for target in wanted:
        target_report = TargetReport(target, ATTACHED)
        link = current.get(target)
        if link is None or not link.live:
            actions.append(AttachNode(ref, target, attach, target_report))
        report.targets.append(target_report)
