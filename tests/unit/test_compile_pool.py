"""The compile pool: at most N builds at a time, namespaces in turn, nothing started that nobody wants
any more, and passes that never wait for a build. Builds are the in-memory kernel's."""

from __future__ import annotations

import threading

import pytest

from node_agent import errors
from node_agent.compile_pool import RETRY_SECONDS, CompilePool, at_once, on_thread
from node_agent.compile_queue import CompileQueue
from node_agent.kernel.backend import LoadedProgram, ProgramBuild, ProgramRef
from node_agent.model import Pod
from node_agent.reconcile import ATTACHED, Reconciler
from node_agent.status import UNLOADING
from tests.unit.agent_harness import Node
from tests.unit.builders import node_program, parsed, pod
from tests.unit.fakes import FakeBackend, FakeCgroups, ManualStart

WEB = {"app": "web"}
BUILD = parsed(node_program()).build


def refs(namespace: str, count: int) -> dict[ProgramRef, ProgramBuild]:
    return {ProgramRef(namespace, f"p{i}", "v"): BUILD for i in range(count)}


class SlowKernel(FakeBackend):
    """load() blocks until the test releases it, counting how many run at once."""

    def __init__(self) -> None:
        super().__init__()
        self.release = threading.Event()
        self.lock = threading.Lock()
        self.running = self.most = 0

    def load(self, ref: ProgramRef, build: ProgramBuild, previous: ProgramRef | None = None) -> LoadedProgram:
        with self.lock:
            self.running += 1
            self.most = max(self.most, self.running)
        try:
            assert self.release.wait(10)
            return super().load(ref, build)
        finally:
            with self.lock:
                self.running -= 1


def test_at_most_two_builds_run_at_once_on_real_threads_and_a_submit_never_waits():
    kernel = SlowKernel()
    woken = threading.Event()
    pool = CompilePool(kernel.load, concurrency=2, start=on_thread, on_done=woken.set)
    progress = pool.submit(refs("a", 3) | refs("b", 3))  # returns at once: six builds are blocked
    assert len(progress.waiting) == 6 and sorted(progress.waiting.values()).count(0) == 2
    assert len(pool.building()) == 2 and kernel.loads == []
    kernel.release.set()
    assert pool.wait_idle(10)
    assert kernel.most == 2 and len(kernel.loads) == 6 and woken.is_set()
    assert len(pool.submit(refs("a", 3) | refs("b", 3)).built) == 6


def test_namespaces_take_turns_for_the_slots():
    start = ManualStart()
    pool = CompilePool(FakeBackend().load, concurrency=2, queue=CompileQueue(), start=start)
    flood, quiet = refs("flood", 5), refs("quiet", 1)
    pool.submit(flood | quiet)
    assert {r.namespace for r in pool.started} == {"flood", "quiet"}
    late = refs("_cluster", 2)
    pool.submit(flood | quiet | late)  # the slots are full: the newcomers wait
    start.finish_one()
    # The freed slot goes to the namespace never served, ahead of the flood's next.
    assert pool.started[-1].namespace == "_cluster"
    start.finish_one()
    assert pool.started[-1].namespace == "flood"
    start.finish_all()
    assert len(pool.started) == 8


def test_a_version_no_longer_wanted_is_never_started_and_one_running_finishes():
    start = ManualStart()
    kernel = FakeBackend()
    pool = CompilePool(kernel.load, concurrency=1, start=start)
    wanted = refs("ns", 3)
    first, *rest = wanted
    pool.submit(wanted)
    assert pool.started == [first]
    pool.submit({})  # all three deleted while the first compiles
    start.finish_all()
    assert kernel.loads == [first] and pool.started == [first]
    progress = pool.submit({})
    assert list(progress.built) == [first]  # handed over, for the pass to unload
    assert set(rest).isdisjoint(pool.started)


def test_a_build_error_is_the_versions_and_an_unexpected_error_is_retried_later():
    class Kernel(FakeBackend):
        crashes = 1

        def load(
            self, ref: ProgramRef, build: ProgramBuild, previous: ProgramRef | None = None
        ) -> LoadedProgram:
            if ref.name == "bad":
                raise errors.CompileError("program.c:1:1: error: nope")
            if self.crashes:
                self.crashes -= 1
                raise OSError(28, "No space left on device")
            return super().load(ref, build)

    now = [0.0]
    pool = CompilePool(Kernel().load, start=at_once, clock=lambda: now[0])
    bad, good = ProgramRef("ns", "bad", "v"), ProgramRef("ns", "good", "v")
    progress = pool.submit({bad: BUILD, good: BUILD})
    assert isinstance(progress.failed[bad], errors.CompileError) and good not in progress.built
    assert pool.submit({good: BUILD}).waiting == {good: 0}  # held out, not in a loop
    assert pool.started.count(good) == 1
    now[0] += RETRY_SECONDS
    assert good in pool.submit({good: BUILD}).built


def test_a_pool_needs_a_slot():
    with pytest.raises(ValueError):
        CompilePool(FakeBackend().load, concurrency=0)


# -- the pass with the pool -----------------------------------------------------------------------


def pooled(kernel: FakeBackend, uids: set[str]) -> tuple[Reconciler, ManualStart]:
    start = ManualStart()
    pool = CompilePool(kernel.load, concurrency=1, start=start)
    return Reconciler(kernel, FakeCgroups(set(uids)), pool=pool), start


def run(reconciler: Reconciler, programs: list[dict], pods: list[dict]):
    return reconciler.run([parsed(p) for p in programs], [Pod.from_object(p) for p in pods])


def test_pods_are_attached_while_another_program_compiles():
    kernel = FakeBackend()
    reconciler, compiles = pooled(kernel, {"uid-web-1", "uid-web-2"})
    fast = node_program("fast")
    run(reconciler, [fast], [pod("web-1", WEB)])
    compiles.finish_all()
    slow = node_program("slow", source="int slow;", selector={"matchLabels": {"app": "slow"}})
    result = run(reconciler, [fast, slow], [pod("web-1", WEB)])
    assert result.queued and len(compiles.jobs) == 1  # the slow one compiles ...
    result = run(reconciler, [fast, slow], [pod("web-1", WEB), pod("web-2", WEB)])
    fast_report = next(r for r in result.reports if r.name == "fast-v1")
    # ... and a new pod of the other program is attached meanwhile.
    assert [(p.name, p.state) for p in fast_report.pods] == [("web-1", ATTACHED), ("web-2", ATTACHED)]
    assert {uid for links in kernel.links.values() for uid in links} == {"uid-web-1", "uid-web-2"}


def test_an_update_that_is_overtaken_while_compiling_is_unloaded_and_never_served():
    kernel = FakeBackend()
    reconciler, compiles = pooled(kernel, {"uid-web-1"})
    web = [pod("web-1", WEB)]
    run(reconciler, [node_program(source="v1")], web)
    compiles.finish_all()
    run(reconciler, [node_program(source="v1")], web)
    [v1] = kernel.programs
    run(reconciler, [node_program(source="v2", generation=2)], web)  # v2 starts compiling
    result = run(reconciler, [node_program(source="v3", generation=3)], web)  # v3 waits for v2's slot
    assert result.reports[0].serving_version == v1.version
    compiles.finish_one()  # v2 ends, unwanted; v3 starts
    result = run(reconciler, [node_program(source="v3", generation=3)], web)
    assert result.reports[0].serving_version == v1.version  # never the unwanted v2
    assert set(kernel.programs) == {v1}  # v2 was unloaded
    compiles.finish_all()
    result = run(reconciler, [node_program(source="v3", generation=3)], web)
    [v3] = kernel.programs
    assert result.reports[0].serving_version == v3.version == result.reports[0].version
    assert kernel.updates == [(v1, v3, "uid-web-1")]  # moved in place from v1 to v3


def test_an_entry_removed_while_it_compiles_stays_unloading_until_its_version_is_unloaded():
    kernel, start = FakeBackend(), ManualStart()
    node = Node(kernel=kernel, pool=CompilePool(kernel.load, start=start))
    node.serve(node_program())
    node.reconcile()  # its compile starts
    node.serve()  # the entry leaves the spec while it compiles
    node.reconcile()
    assert node.entry("counter")["reason"] == UNLOADING  # it would pin after the operator let go
    start.finish_all()
    node.reconcile()  # the version it pinned is nobody's: unloaded
    assert kernel.programs == {} and node.status["programs"] == []
