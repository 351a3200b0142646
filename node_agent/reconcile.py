"""Desired vs actual for one node: the agent's whole job, free of Kubernetes and of the kernel.

Each pass reads what the kernel runs (through the backend), compares it with the programs and pods
of this node, and applies the difference. A pass that finds nothing to do changes nothing.
"""

from __future__ import annotations

import fnmatch
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from bpfleet_api import diagnostics, reasons
from node_agent.compile_queue import CompilePlan, CompileQueue
from node_agent.errors import AgentError, ProgramBuildError, UnsupportedOnNode
from node_agent.kernel.attach_types import (
    NODE_NETDEV,
    NODE_WIDE,
    PER_POD_CGROUP,
    PER_POD_NETDEV,
    KernelAttach,
)
from node_agent.kernel.backend import NODE_TARGET, KernelBackend, LoadedProgram, ProgramRef
from node_agent.model import NodeProgram, Pod

log = logging.getLogger(__name__)

ATTACHED = "Attached"
WAITING = "Waiting"
FAILED = "Failed"


class CgroupResolver(Protocol):
    kubelet_root: Path

    def find(self, uid: str, qos_class: str | None) -> Path | None: ...


class FeatureCheck(Protocol):
    def unsupported(self, api_type: str) -> str | None: ...


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
    detached: bool = False  # deleting, and nothing of it is left on this node
    # Waiting for its turn to compile: how many builds are ahead of it on this node.
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
    # Versions left to compile in a later pass: that pass should come at once.
    queued: bool = False
    # Programs on host interfaces by pattern: interfaces that appear are attached at the next pass.
    follows_interfaces: bool = False


class Reconciler:
    def __init__(
        self,
        backend: KernelBackend,
        cgroups: CgroupResolver,
        features: FeatureCheck | None = None,
        queue: CompileQueue | None = None,
    ) -> None:
        self.backend = backend
        self.cgroups = cgroups
        self.features = features
        self.queue = queue or CompileQueue()
        # A version that failed to build fails again; remember it instead of compiling in a loop.
        self._build_failures: dict[ProgramRef, ProgramBuildError] = {}
        # The hook of each version served since the agent started: a link moves to a new version in
        # place only when both hang off the same hook (unknown after a restart: the backend checks).
        self._hooks: dict[ProgramRef, KernelAttach] = {}

    def run(
        self,
        programs: Iterable[NodeProgram],
        pods: Iterable[Pod],
        held: Iterable[tuple[str, str]] = (),
    ) -> PassResult:
        """`held`: programs whose entry the agent could not read this pass; what runs of them
        is kept as it is (no attach, no detach, no unload) until a readable spec says otherwise."""
        programs, pods = list(programs), list(pods)
        loaded = self.backend.loaded()
        active = [p for p in programs if not p.deleting]
        plan = self._build_in_turn(active, loaded)
        held = set(held) - _programs(programs)
        serving: set[ProgramRef] = {ref for ref in loaded if ref.program in held}
        reports: list[ProgramReport] = []
        self._cleanup_failed = False
        by_program: dict[tuple[str, str], ProgramReport] = {}
        waiting = failed = False

        for program in active:
            report = ProgramReport(
                program.namespace,
                program.name,
                program.generation,
                program.ref.version,
                scope=program.scope,
                attach_type=program.attach_type,
                target=program.build.attach.target,
            )
            reports.append(report)
            by_program[program.ref.program] = report
            ref = self._serving(program, loaded, report, plan)
            if ref is None:
                continue
            serving.add(ref)
            report.loaded, report.serving_version = loaded[ref], ref.version
            if program.scope == "Node":
                report.targets = self._attach_node(program, ref, report)
            else:
                if ref == program.ref:
                    self._hooks[ref] = program.build.attach
                    self._move_to(program, loaded, pods)
                report.pods = self._attach_selected(program, ref, pods, report)
            states = [p.state for p in report.pods] + [t.state for t in report.targets]
            waiting = waiting or WAITING in states
            failed = failed or FAILED in states

        still_loaded = {ref.program for ref in serving}
        for ref in sorted(set(loaded) - serving):
            log.info(
                "unloading program version",
                extra={"program": f"{ref.namespace}/{ref.name}", "version": ref.version},
            )
            unloaded = self._isolated(
                f"unloading version {ref.version}",
                by_program.get(ref.program),
                ref,
                "",
                self.backend.unload,
                ref,
            )
            if not unloaded:
                still_loaded.add(ref.program)  # a deleting program keeps its finalizer until it is gone
        keep = _programs(programs) | held
        self._build_failures = {r: e for r, e in self._build_failures.items() if r.program in keep}
        self._hooks = {r: a for r, a in self._hooks.items() if r in serving}

        for program in programs:
            if program.deleting:
                reports.append(
                    ProgramReport(
                        program.namespace,
                        program.name,
                        program.generation,
                        program.ref.version,
                        detached=program.ref.program not in still_loaded,
                    )
                )
        follows = any(p.build.attach.scope == NODE_NETDEV for p in active)
        failed = failed or self._cleanup_failed
        return PassResult(reports, waiting, failed, queued=bool(plan.later), follows_interfaces=follows)

    def _isolated(
        self,
        what: str,
        report: ProgramReport | None,
        ref: ProgramRef,
        target: str,
        action: Callable[..., object],
        *args: object,
    ) -> bool:
        """Runs one detach or unload; a failure is logged, reported and retried, never the end of
        the pass."""
        try:
            action(*args)
        except Exception as e:
            if not isinstance(e, (AgentError, OSError)):
                log.exception("unexpected error", extra={"program": f"{ref.namespace}/{ref.name}"})
            log.warning(
                f"{what} failed",
                extra={"program": f"{ref.namespace}/{ref.name}", "target": target, "error": str(e)},
            )
            self._cleanup_failed = True
            if report is not None:
                report.cleanup_failures.append((reasons.DETACH_FAILED, f"{what}: {e}"))
            return False
        return True

    def _build_in_turn(
        self, active: list[NodeProgram], loaded: dict[ProgramRef, LoadedProgram]
    ) -> CompilePlan:
        """Builds the new versions whose turn it is (see compile_queue); the rest wait."""
        pending: dict[ProgramRef, NodeProgram] = {}
        for program in active:
            ref = program.ref
            if ref in loaded or ref in self._build_failures:
                continue
            why_not = self.features.unsupported(program.attach_type) if self.features else None
            if why_not:
                # Never compiled, and it costs no turn: the node could not run it anyway.
                self._failed(ref, UnsupportedOnNode(why_not))
                continue
            pending.setdefault(ref, program)
        plan = self.queue.plan(pending)
        for ref in plan.now:
            log.info(
                "compiling program", extra={"program": f"{ref.namespace}/{ref.name}", "version": ref.version}
            )
            try:
                loaded[ref] = self.backend.load(ref, pending[ref].build)
            except ProgramBuildError as e:
                self._failed(ref, e)
        if plan.later:
            log.info("compiles wait for their turn", extra={"queued": len(plan.later)})
        return plan

    def _failed(self, ref: ProgramRef, error: ProgramBuildError) -> None:
        log.warning(
            "program failed to build",
            extra={
                "program": f"{ref.namespace}/{ref.name}",
                "reason": error.reason,
                "error": diagnostics.headline(error.reason, str(error)),
            },
        )
        self._build_failures[ref] = error

    def _serving(
        self,
        program: NodeProgram,
        loaded: dict[ProgramRef, LoadedProgram],
        report: ProgramReport,
        plan: CompilePlan,
    ) -> ProgramRef | None:
        """The version to serve: the desired one, or, while it cannot be built or waits for its turn,
        the one running before."""
        ref = program.ref
        if ref in loaded:
            return ref
        report.build_error = self._build_failures.get(ref)
        if report.build_error is None:
            report.queued = plan.later.get(ref, 0)
        previous = [r for r in loaded if r.program == ref.program]
        return max(previous, key=lambda r: loaded[r].prog_id) if previous else None

    def _attach_selected(
        self, program: NodeProgram, ref: ProgramRef, pods: list[Pod], report: ProgramReport
    ) -> list[PodReport]:
        selected = [pod for pod in pods if program.selects(pod)]
        attachments = self.backend.attachments(ref)
        wanted = {pod.uid for pod in selected}
        for uid in sorted(set(attachments) - wanted):
            self._isolated(f"detaching pod {uid}", report, ref, uid, self.backend.detach, ref, uid)

        reports = []
        for pod in selected:
            current = attachments.get(pod.uid)
            if current is not None and current.live:
                report = PodReport(pod.name, pod.uid, ATTACHED)
            else:
                report = self._attach_pod(program, ref, pod)
            if program.cluster:
                report.namespace = pod.namespace
            reports.append(report)
        return reports

    def _move_to(
        self, program: NodeProgram, loaded: dict[ProgramRef, LoadedProgram], pods: list[Pod]
    ) -> None:
        """Switches the links of older versions to this one in place, pod by pod, for the pods it
        still selects: no gap, no overlap, same link. A link that cannot move stays; the pod is then
        attached beside it and the old version unloaded, as for a new pod."""
        new, attach = program.ref, program.build.attach
        if attach.scope not in (PER_POD_CGROUP, PER_POD_NETDEV):
            return  # perf-event links (tracing) cannot be updated
        old_versions = sorted(r for r in loaded if r.program == new.program and r != new)
        if not old_versions:
            return
        selected = {pod.uid: pod for pod in pods if program.selects(pod)}
        current = self.backend.attachments(new)
        for old in old_versions:
            if self._hooks.get(old, attach) != attach:
                continue  # another hook or interface: a link there is not this version's to take
            for uid, link in sorted(self.backend.attachments(old).items()):
                pod = selected.get(uid)
                if pod is None or not link.live or (uid in current and current[uid].live):
                    continue
                cgroup = self.cgroups.find(pod.uid, pod.qos_class)
                if cgroup is None:
                    continue
                try:
                    current[uid] = self.backend.update(old, new, uid, cgroup, attach)
                except (AgentError, OSError) as e:
                    log.warning(
                        "cannot update the link in place; attaching beside it",
                        extra={"program": f"{new.namespace}/{new.name}", "pod": pod.name, "error": str(e)},
                    )
                    continue
                log.info(
                    "updated in place",
                    extra={"program": f"{new.namespace}/{new.name}", "pod": pod.name, "from": old.version},
                )

    def _attach_node(
        self, program: NodeProgram, ref: ProgramRef, report: ProgramReport
    ) -> list[TargetReport]:
        """Scope Node: the program's event for the whole node, or every host interface whose name
        matches the pattern now (ones that vanished are dropped, new ones attached)."""
        attach = program.build.attach
        if attach.scope == NODE_WIDE:
            wanted = [NODE_TARGET]
        else:
            interfaces = self.backend.node_interfaces()
            wanted = sorted(name for name in interfaces if fnmatch.fnmatchcase(name, attach.target))
        current = self.backend.node_attachments(ref)
        for target in sorted(set(current) - set(wanted)):
            log.info("detaching from a target that is gone", extra={"program": ref.name, "target": target})
            self._isolated(f"detaching {target}", report, ref, target, self.backend.detach_node, ref, target)
        reports = []
        for target in wanted:
            link = current.get(target)
            if link is not None and link.live:
                reports.append(TargetReport(target, ATTACHED))
                continue
            try:
                self.backend.attach_node(ref, target, attach)
            except (AgentError, OSError) as e:
                reports.append(TargetReport(target, FAILED, _reason(e), str(e)))
                continue
            log.info(
                "attached on the node", extra={"program": f"{ref.namespace}/{ref.name}", "target": target}
            )
            reports.append(TargetReport(target, ATTACHED))
        return reports

    def _attach_pod(self, program: NodeProgram, ref: ProgramRef, pod: Pod) -> PodReport:
        cgroup = self.cgroups.find(pod.uid, pod.qos_class)
        if cgroup is None:
            if pod.phase == "Pending":
                return PodReport(
                    pod.name, pod.uid, WAITING, reasons.POD_CGROUP_NOT_FOUND, "pod cgroup not created yet"
                )
            return PodReport(
                pod.name,
                pod.uid,
                FAILED,
                reasons.POD_CGROUP_NOT_FOUND,
                f"no cgroup v2 directory for pod UID {pod.uid} under {self.cgroups.kubelet_root}; if kubelet "
                "keeps pods elsewhere, set the agent's BPFLEET_KUBELET_CGROUP_ROOT (agent.kubeletCgroupRoot)",
            )
        container = program.build.attach.container
        container_id = pod.containers.get(container, "") if container else ""
        if container and not container_id:
            state = WAITING if pod.phase == "Pending" else FAILED
            return PodReport(
                pod.name,
                pod.uid,
                state,
                reasons.ATTACH_FAILED,
                f"the pod has no started container {container}",
            )
        try:
            self.backend.attach(ref, pod.uid, cgroup, program.build.attach, container_id=container_id)
        except (AgentError, OSError) as e:
            return PodReport(pod.name, pod.uid, FAILED, _reason(e), str(e))
        log.info(
            "attached",
            extra={"program": f"{ref.namespace}/{ref.name}", "pod": pod.name, "cgroup": str(cgroup)},
        )
        return PodReport(pod.name, pod.uid, ATTACHED)


def _programs(programs: list[NodeProgram]) -> set[tuple[str, str]]:
    return {p.ref.program for p in programs if not p.deleting}


def _reason(error: Exception) -> str:
    return error.reason if isinstance(error, AgentError) else reasons.ATTACH_FAILED
