"""Desired vs actual for one node: the agent's whole job, free of Kubernetes.

A pass observes (the model of what runs, read from the kernel at start and at resync: observed),
hands the versions that need a build to the compile pool and never waits for one (compile_pool),
plans (planner, pure) and applies (executor, each action on its own). A pass that finds nothing to
do changes nothing.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable

from bpfleet_api import diagnostics
from node_agent import planner
from node_agent.compile_pool import CompilePool, at_once
from node_agent.errors import ProgramBuildError, UnsupportedOnNode
from node_agent.executor import execute
from node_agent.kernel.attach_types import KernelAttach
from node_agent.kernel.backend import KernelBackend, ProgramBuild, ProgramRef
from node_agent.model import NodeProgram, Pod
from node_agent.observed import Observed, every_pass
from node_agent.reports import (
    ATTACHED,
    FAILED,
    WAITING,
    CgroupResolver,
    FeatureCheck,
    PassResult,
    PodReport,
    ProgramReport,
    TargetReport,
)

__all__ = [
    "ATTACHED",
    "FAILED",
    "WAITING",
    "CgroupResolver",
    "FeatureCheck",
    "PassResult",
    "PodReport",
    "ProgramReport",
    "Reconciler",
    "TargetReport",
]

log = logging.getLogger(__name__)


class Reconciler:
    def __init__(
        self,
        backend: KernelBackend,
        cgroups: CgroupResolver,
        features: FeatureCheck | None = None,
        pool: CompilePool | None = None,
        resync_due: Callable[[], bool] | None = None,
    ) -> None:
        """`pool`: where versions compile; by default each build runs at once inside the pass that
        asks for it (tests of the pure logic). `resync_due`: whether this pass reads the kernel
        again rather than trusting the observed model (default: every pass)."""
        self.backend = backend
        self.cgroups = cgroups
        self.features = features
        self.pool = pool or CompilePool(backend.load, start=at_once)
        self.observed = Observed(backend)
        self._resync_due = resync_due or every_pass()
        # A version that failed to build fails again; remember it instead of compiling in a loop.
        self._build_failures: dict[ProgramRef, ProgramBuildError] = {}
        # The hook of each version served since the agent started: a link moves to a new version in
        # place only when both hang off the same hook (unknown after a restart: the backend checks).
        self._hooks: dict[ProgramRef, KernelAttach] = {}
        self._logged_waiting: set[ProgramRef] = set()

    def run(
        self,
        programs: Iterable[NodeProgram],
        pods: Iterable[Pod],
        held: Iterable[tuple[str, str]] = (),
    ) -> PassResult:
        """`held`: programs whose entry the agent could not read this pass; what runs of them
        is kept as it is (no attach, no detach, no unload) until a readable spec says otherwise."""
        programs, pods = list(programs), list(pods)
        self.observed.refresh(full=self._resync_due())
        # An entry absent from spec is what makes a program go: the plan unloads what nobody serves.
        builds = self._builds(programs)
        held_set = set(held) - _programs(programs)
        the_plan = planner.plan(
            programs,
            pods,
            self.observed,
            builds,
            lambda pod: self.cgroups.find(pod.uid, pod.qos_class),
            self.cgroups.kubelet_root,
            held_set,
            self._hooks,
        )
        outcome = execute(the_plan.actions, self.backend, self.observed)

        for program in programs:
            if program.ref in the_plan.serving:
                self._hooks[program.ref] = program.build.attach
        keep = _programs(programs) | held_set
        self._build_failures = {r: e for r, e in self._build_failures.items() if r.program in keep}
        self._hooks = {r: a for r, a in self._hooks.items() if r in the_plan.serving}
        reports = the_plan.reports
        states = [p.state for r in reports for p in r.pods] + [t.state for r in reports for t in r.targets]
        return PassResult(
            reports,
            waiting=WAITING in states,
            failed=FAILED in states or outcome.failed_cleanups > 0,
            queued=bool(builds.waiting),
            follows_interfaces=the_plan.follows_interfaces,
        )

    def _builds(self, programs: list[NodeProgram]) -> planner.BuildState:
        """Hands the versions not loaded yet to the pool and takes what it finished."""
        pending: dict[ProgramRef, ProgramBuild] = {}
        for program in programs:
            ref = program.ref
            if ref in self.observed.loaded or ref in self._build_failures:
                continue
            why_not = _unsupported(self.features, program) if self.features else None
            if why_not:
                # Never compiled, and it costs no turn: the node could not run it anyway.
                self._failed(ref, UnsupportedOnNode(why_not))
                continue
            pending.setdefault(ref, program.build)
        # The newest version of the program already here hands its maps over (map contents carry on).
        previous = {
            ref: newest
            for ref in pending
            if (
                newest := max(
                    (r for r in self.observed.loaded if r.program == ref.program),
                    key=lambda r: self.observed.loaded[r].prog_id,
                    default=None,
                )
            )
            is not None
        }
        progress = self.pool.submit(pending, previous)
        for loaded in progress.built.values():
            self.observed.built(loaded)
        for ref, error in progress.failed.items():
            self._failed(ref, error)
        if set(progress.waiting) != self._logged_waiting:  # passes come often while one compiles
            self._logged_waiting = set(progress.waiting)
            log.info("compiles waiting or running", extra={"queued": len(progress.waiting)})
        wanted = {p.ref for p in programs}
        return planner.BuildState(
            self._build_failures,
            progress.waiting,
            frozenset(ref for ref in progress.built if ref not in wanted),
        )

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


def _programs(programs: list[NodeProgram]) -> set[tuple[str, str]]:
    return {p.ref.program for p in programs}


def _unsupported(features: FeatureCheck, program: NodeProgram) -> str | None:
    """Why the node cannot run the program: C needs kernel headers, bytecode the kernel's BTF."""
    if program.build.bytecode is not None:
        return features.unsupported(program.attach_type, bytecode=True)
    return features.unsupported(program.attach_type)
