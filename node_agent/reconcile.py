"""Desired vs actual for one node: the agent's whole job, free of Kubernetes and of the kernel.

Each pass reads what the kernel runs (through the backend), compares it with the EbpfNodePrograms
and pods of this node, and applies the difference. A pass that finds nothing to do changes nothing.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from bpfleet_api import diagnostics, reasons, selectors
from node_agent.errors import AgentError, ProgramBuildError, UnsupportedOnNode
from node_agent.kernel.backend import KernelBackend, LoadedProgram, ProgramRef
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


@dataclass
class ProgramReport:
    """What one pass found for one EbpfNodeProgram; the agent turns it into status."""

    namespace: str
    name: str
    generation: int
    version: str
    loaded: LoadedProgram | None = None
    serving_version: str | None = None  # differs from version while a failed rollout keeps the old one
    build_error: ProgramBuildError | None = None
    pods: list[PodReport] = field(default_factory=list)
    detached: bool = False  # deleting, and nothing of it is left on this node


@dataclass
class PassResult:
    reports: list[ProgramReport]
    # Pods selected but not attached yet (cgroup not there yet): look again soon.
    waiting: bool
    # Pods whose attachment failed: worth another try, but not at the pace of a pod about to start.
    failed: bool = False


class Reconciler:
    def __init__(
        self, backend: KernelBackend, cgroups: CgroupResolver, features: FeatureCheck | None = None
    ) -> None:
        self.backend = backend
        self.cgroups = cgroups
        self.features = features
        # A version that failed to build fails again; remember it instead of compiling in a loop.
        self._build_failures: dict[ProgramRef, ProgramBuildError] = {}

    def run(self, programs: Iterable[NodeProgram], pods: Iterable[Pod]) -> PassResult:
        programs, pods = list(programs), list(pods)
        loaded = self.backend.loaded()
        serving: set[ProgramRef] = set()
        reports: list[ProgramReport] = []
        waiting = failed = False

        for program in programs:
            if program.deleting:
                continue
            report = ProgramReport(program.namespace, program.name, program.generation, program.ref.version)
            reports.append(report)
            ref = self._ensure_loaded(program, loaded, report)
            if ref is None:
                continue
            serving.add(ref)
            report.loaded, report.serving_version = loaded[ref], ref.version
            report.pods = self._attach_selected(program, ref, pods)
            waiting = waiting or any(p.state == WAITING for p in report.pods)
            failed = failed or any(p.state == FAILED for p in report.pods)

        for ref in sorted(set(loaded) - serving):
            log.info(
                "unloading program version",
                extra={"program": f"{ref.namespace}/{ref.name}", "version": ref.version},
            )
            self.backend.unload(ref)
        self._build_failures = {
            r: e for r, e in self._build_failures.items() if r.program in _programs(programs)
        }

        still_loaded = {ref.program for ref in serving}
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
        return PassResult(reports, waiting, failed)

    def _ensure_loaded(
        self, program: NodeProgram, loaded: dict[ProgramRef, LoadedProgram], report: ProgramReport
    ) -> ProgramRef | None:
        """The version to serve: the desired one, or, when it cannot be built, the one running before."""
        ref = program.ref
        if ref not in loaded:
            failure = self._build_failures.get(ref)
            if failure is None:
                try:
                    loaded[ref] = self._build(program)
                except ProgramBuildError as e:
                    log.warning(
                        "program failed to build",
                        extra={
                            "program": f"{ref.namespace}/{ref.name}",
                            "reason": e.reason,
                            "error": diagnostics.headline(e.reason, str(e)),
                        },
                    )
                    self._build_failures[ref] = e
                    failure = e
            if failure is not None:
                report.build_error = failure
                previous = [r for r in loaded if r.program == ref.program]
                return max(previous, key=lambda r: loaded[r].prog_id) if previous else None
        return ref

    def _build(self, program: NodeProgram) -> LoadedProgram:
        why_not = self.features.unsupported(program.attach_type) if self.features else None
        if why_not:
            raise UnsupportedOnNode(why_not)  # never compiled: the node could not run it anyway
        ref = program.ref
        log.info(
            "compiling program", extra={"program": f"{ref.namespace}/{ref.name}", "version": ref.version}
        )
        return self.backend.load(ref, program.build)

    def _attach_selected(self, program: NodeProgram, ref: ProgramRef, pods: list[Pod]) -> list[PodReport]:
        selected = [
            pod
            for pod in pods
            if pod.namespace == program.namespace
            and pod.schedulable_for_programs
            and selectors.matches(program.pod_selector, pod.labels)
        ]
        attachments = self.backend.attachments(ref)
        wanted = {pod.uid for pod in selected}
        for uid in sorted(set(attachments) - wanted):
            self.backend.detach(ref, uid)

        reports = []
        for pod in selected:
            current = attachments.get(pod.uid)
            if current is not None and current.live:
                reports.append(PodReport(pod.name, pod.uid, ATTACHED))
                continue
            reports.append(self._attach_pod(program, ref, pod))
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
        except AgentError as e:
            return PodReport(pod.name, pod.uid, FAILED, e.reason, str(e))
        log.info(
            "attached",
            extra={"program": f"{ref.namespace}/{ref.name}", "pod": pod.name, "cgroup": str(cgroup)},
        )
        return PodReport(pod.name, pod.uid, ATTACHED)


def _programs(programs: list[NodeProgram]) -> set[tuple[str, str]]:
    return {p.ref.program for p in programs if not p.deleting}
