"""The observed model: adopted from the kernel at start, trusted between resyncs (a pass reads no
bpffs), read again at resync and after an action failed."""

from __future__ import annotations

from node_agent.kernel.backend import Attachment, LoadedProgram, ProgramRef
from node_agent.model import Pod
from node_agent.observed import every
from node_agent.reconcile import ATTACHED, Reconciler
from tests.unit.builders import node_program, parsed, pod
from tests.unit.fakes import FakeBackend, FakeCgroups

WEB = {"app": "web"}


class CountingKernel(FakeBackend):
    """Counts the reads a pass makes of the kernel."""

    reads = 0

    def loaded(self) -> dict[ProgramRef, LoadedProgram]:
        self.reads += 1
        return super().loaded()

    def attachments(self, ref: ProgramRef) -> dict[str, Attachment]:
        self.reads += 1
        return super().attachments(ref)


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def run(reconciler: Reconciler, pods: list[dict]):
    return reconciler.run([parsed(node_program())], [Pod.from_object(p) for p in pods])


def test_what_an_earlier_agent_left_is_adopted_not_rebuilt():
    kernel, cgroups = FakeBackend(), FakeCgroups({"uid-web-1"})
    run(Reconciler(kernel, cgroups), [pod("web-1", WEB)])
    links = {ref: dict(v) for ref, v in kernel.links.items()}
    restarted = Reconciler(kernel, cgroups)  # a new agent process, the same kernel
    result = run(restarted, [pod("web-1", WEB)])
    assert len(kernel.loads) == 1 and kernel.links == links
    assert result.reports[0].pods[0].state == ATTACHED


def test_between_resyncs_a_pass_reads_nothing_and_a_resync_sees_what_the_kernel_did():
    kernel, cgroups, clock = CountingKernel(), FakeCgroups({"uid-web-1", "uid-web-2"}), Clock()
    reconciler = Reconciler(kernel, cgroups, resync_due=every(30.0, clock))
    run(reconciler, [pod("web-1", WEB)])
    kernel.reads = 0
    clock.now = 10.0
    run(reconciler, [pod("web-1", WEB), pod("web-2", WEB)])  # a new pod: attached from the model
    assert kernel.reads == 0 and {"uid-web-1", "uid-web-2"} <= set(next(iter(kernel.links.values())))
    kernel.cgroup_removed("uid-web-1")  # the kernel drops the link on its own
    clock.now = 20.0
    run(reconciler, [pod("web-1", WEB), pod("web-2", WEB)])
    [links] = kernel.links.values()
    assert not links["uid-web-1"].live  # not seen yet: the model says attached
    clock.now = 40.0
    run(reconciler, [pod("web-1", WEB), pod("web-2", WEB)])
    assert kernel.reads > 0
    [links] = kernel.links.values()
    assert links["uid-web-1"].live  # the resync saw it, and the pass attached it again


def test_a_failed_action_makes_the_next_pass_read_the_kernel():
    kernel, cgroups, clock = CountingKernel(), FakeCgroups({"uid-web-1"}), Clock()
    reconciler = Reconciler(kernel, cgroups, resync_due=every(30.0, clock))
    run(reconciler, [pod("web-1", WEB)])
    kernel.refuse_detach.add("uid-web-1")
    run(reconciler, [])
    kernel.reads = 0
    kernel.refuse_detach.clear()
    clock.now = 1.0
    result = run(reconciler, [])
    assert kernel.reads > 0 and not result.failed
    assert all(not links for links in kernel.links.values())
