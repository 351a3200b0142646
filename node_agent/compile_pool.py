"""Compiles outside the reconcile pass: a bounded pool, fair across namespaces.

The pass tells the pool which versions it needs (`submit`) and never waits for one. The pool starts
at most `concurrency` builds at a time, in the order the CompileQueue gives (namespaces in turn,
ClusterEbpfPrograms as one), starts the next one as soon as a slot frees, and calls `on_done` after
each build so that the agent runs a pass to serve it. A version no longer wanted is never started;
one already running finishes, and the pass unloads its result if nobody wants it then.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from node_agent.compile_queue import CompileQueue
from node_agent.errors import ProgramBuildError
from node_agent.kernel.backend import LoadedProgram, ProgramBuild, ProgramRef

log = logging.getLogger(__name__)

DEFAULT_CONCURRENCY = 2
# A build that failed for a reason not the user's (an I/O error, a bug) is tried again this late,
# not in a loop at the pace of the passes it wakes.
RETRY_SECONDS = 5.0

# (version, its build, the program's version whose maps it takes over) -> the loaded version.
Build = Callable[[ProgramRef, ProgramBuild, ProgramRef | None], LoadedProgram]
Job = Callable[[], None]
# Runs a job: on a thread of its own (the agent), or at once in the caller (tests of pure logic).
Start = Callable[[Job], None]


def on_thread(job: Job) -> None:
    threading.Thread(target=job, name="compile", daemon=True).start()


def at_once(job: Job) -> None:
    job()


@dataclass(frozen=True)
class Progress:
    """What the pool says to a pass: the builds that ended since the last one, and where each
    wanted version not built yet stands (0: compiling now; n: n builds are ahead of it)."""

    built: dict[ProgramRef, LoadedProgram] = field(default_factory=dict)
    failed: dict[ProgramRef, ProgramBuildError] = field(default_factory=dict)
    waiting: dict[ProgramRef, int] = field(default_factory=dict)


class CompilePool:
    def __init__(
        self,
        build: Build,
        concurrency: int = DEFAULT_CONCURRENCY,
        queue: CompileQueue | None = None,
        start: Start = on_thread,
        on_done: Callable[[], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if concurrency < 1:
            raise ValueError("the compile pool needs at least one slot")
        self._build, self.concurrency, self._start, self._clock = build, concurrency, start, clock
        self.queue = queue or CompileQueue()
        self.on_done = on_done
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self._wanted: dict[ProgramRef, ProgramBuild] = {}
        self._previous: dict[ProgramRef, ProgramRef] = {}
        self._running: set[ProgramRef] = set()
        self._built: dict[ProgramRef, LoadedProgram] = {}
        self._failed: dict[ProgramRef, ProgramBuildError] = {}
        self._retry_at: dict[ProgramRef, float] = {}
        self.started: list[ProgramRef] = []  # every build started, in order (tests and logs)

    def submit(
        self,
        wanted: Mapping[ProgramRef, ProgramBuild],
        previous: Mapping[ProgramRef, ProgramRef] | None = None,
    ) -> Progress:
        """Replaces the set of versions the pass needs built, starts what fits, and hands over the
        builds that ended (wanted or not: the pass unloads what nobody wants). `previous`: for a new
        version, the loaded version of the same program whose maps it carries on."""
        with self._lock:
            self._wanted = dict(wanted)
            self._previous = dict(previous or {})
            for ref in set(self._retry_at) - set(wanted):
                del self._retry_at[ref]
        self._fill()
        with self._lock:
            built, failed = self._built, self._failed
            self._built, self._failed = {}, {}
            return Progress(built, failed, self._positions(set(built) | set(failed)))

    def building(self) -> set[ProgramRef]:
        with self._lock:
            return set(self._running)

    def wait_idle(self, timeout: float) -> bool:
        """Waits until no build runs (tests, shutdown); False on timeout."""
        with self._idle:
            return self._idle.wait_for(lambda: not self._running, timeout)

    def _waiting(self, done: set[ProgramRef]) -> list[ProgramRef]:
        now = self._clock()
        return [
            ref
            for ref in self._wanted
            if ref not in self._running and ref not in done and self._retry_at.get(ref, 0.0) <= now
        ]

    def _positions(self, done: set[ProgramRef]) -> dict[ProgramRef, int]:
        positions = dict.fromkeys(self._running & set(self._wanted), 0)
        # Not a turn taken: the order is the queue's, without moving anyone's place in it.
        for i, ref in enumerate(r for r in self._wanted if r not in self._running and r not in done):
            positions[ref] = len(self._running) + i
        return positions

    def _fill(self) -> None:
        """Starts builds while slots are free. Jobs are started outside the lock: one run at once
        (tests) ends, and fills again, before its start returns."""
        while True:
            with self._lock:
                free = self.concurrency - len(self._running)
                waiting = self._waiting(set(self._built) | set(self._failed))
                if free <= 0 or not waiting:
                    return
                plan = self.queue.plan(waiting, limit=free)
                jobs = []
                for ref in plan.now:
                    self._running.add(ref)
                    self.started.append(ref)
                    jobs.append(self._job(ref, self._wanted[ref], self._previous.get(ref)))
            for job in jobs:
                self._start(job)

    def _job(self, ref: ProgramRef, build: ProgramBuild, previous: ProgramRef | None) -> Job:
        def run() -> None:
            log.info(
                "compiling program", extra={"program": f"{ref.namespace}/{ref.name}", "version": ref.version}
            )
            loaded: LoadedProgram | None = None
            error: ProgramBuildError | None = None
            try:
                loaded = self._build(ref, build, previous)
            except ProgramBuildError as e:
                error = e
            except Exception:
                # Not the user's fault, so not remembered as the version's failure: tried again.
                log.exception("compile failed unexpectedly", extra={"program": f"{ref.namespace}/{ref.name}"})
            with self._lock:
                self._running.discard(ref)
                if loaded is not None:
                    self._built[ref] = loaded
                elif error is not None:
                    self._failed[ref] = error
                else:
                    self._retry_at[ref] = self._clock() + RETRY_SECONDS
                self._idle.notify_all()
            self._fill()
            if self.on_done is not None:
                self.on_done()

        return run
