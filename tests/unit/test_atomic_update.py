"""A new version takes over each existing link in place (BPF_LINK_UPDATE), against the in-memory
kernel: the same link, never two programs on a pod, never none."""

from __future__ import annotations

from node_agent.kernel.backend import ProgramRef
from node_agent.model import Pod, Trust
from node_agent.reconcile import ATTACHED, PassResult, Reconciler
from tests.unit.builders import node_program, parsed, pod
from tests.unit.fakes import FakeBackend, FakeCgroups

WEB = {"app": "web"}
V1 = "int f(struct __sk_buff *skb) { return 1; }"
V2 = "int f(struct __sk_buff *skb) { return 1; /* v2 */ }"
PODS = [pod("web-1", WEB), pod("web-2", WEB)]


class CountingAttach(FakeBackend):
    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.attached: list[tuple[ProgramRef, str]] = []

    def attach(self, ref, pod_uid, cgroup_dir, attach, *, container_id=""):
        self.attached.append((ref, pod_uid))
        return super().attach(ref, pod_uid, cgroup_dir, attach, container_id=container_id)


def run(reconciler: Reconciler, program: dict, pods: list[dict] = PODS) -> PassResult:
    return reconciler.run([parsed(program, Trust())], [Pod.from_object(p) for p in pods])


def setup(**kwargs) -> tuple[CountingAttach, Reconciler, dict[str, int]]:
    kernel = CountingAttach(**kwargs)
    reconciler = Reconciler(kernel, FakeCgroups({"uid-web-1", "uid-web-2"}))
    run(reconciler, node_program(source=V1))
    [v1] = kernel.links
    return kernel, reconciler, {uid: link.link_id for uid, link in kernel.links[v1].items()}


def test_a_new_version_takes_over_each_link_in_place():
    kernel, reconciler, link_ids = setup()
    [v1] = kernel.programs
    kernel.attached.clear()
    result = run(reconciler, node_program(source=V2))
    [v2] = kernel.programs
    assert v2 != v1
    assert sorted(kernel.updates) == [(v1, v2, "uid-web-1"), (v1, v2, "uid-web-2")]
    assert kernel.attached == []  # nothing attached beside: never two programs on a pod
    assert {uid: link.link_id for uid, link in kernel.links[v2].items()} == link_ids  # the same links
    assert v1 not in kernel.links
    [report] = result.reports
    assert [p.state for p in report.pods] == [ATTACHED, ATTACHED] and report.serving_version == v2.version


def test_a_pod_no_longer_selected_is_not_moved_but_detached_with_the_old_version():
    kernel, reconciler, _ = setup()
    run(reconciler, node_program(source=V2), [pod("web-1", WEB), pod("web-2", {"app": "db"})])
    [v2] = kernel.programs
    assert [uid for _, _, uid in kernel.updates] == ["uid-web-1"]
    assert set(kernel.links) == {v2} and set(kernel.links[v2]) == {"uid-web-1"}


def test_another_hook_is_never_taken_over():
    kernel, reconciler, _ = setup()
    ingress = {"type": "CgroupSkb", "direction": "Ingress"}
    run(reconciler, node_program(source=V1, attach=ingress))
    [v2] = kernel.programs
    assert kernel.updates == []
    assert sorted(uid for ref, uid in kernel.attached if ref == v2) == ["uid-web-1", "uid-web-2"]


def test_a_link_that_cannot_move_is_replaced_as_before():
    kernel, reconciler, _ = setup(refuse_update={"uid-web-1"})
    result = run(reconciler, node_program(source=V2))
    [v2] = kernel.programs
    assert [uid for _, _, uid in kernel.updates] == ["uid-web-2"]
    assert [uid for ref, uid in kernel.attached if ref == v2] == ["uid-web-1"]
    assert set(kernel.links) == {v2} and set(kernel.links[v2]) == {"uid-web-1", "uid-web-2"}
    assert [p.state for p in result.reports[0].pods] == [ATTACHED, ATTACHED]


def test_tracing_links_are_not_updated():
    tracepoint = {"type": "Tracepoint", "name": "sched:sched_process_exec"}
    kernel = FakeBackend()
    reconciler = Reconciler(kernel, FakeCgroups({"uid-web-1"}))
    run(reconciler, node_program(source=V1, attach=tracepoint), PODS[:1])
    run(reconciler, node_program(source=V2, attach=tracepoint), PODS[:1])
    assert kernel.updates == []
    [v2] = kernel.programs
    assert set(kernel.links[v2]) == {"uid-web-1"}


def test_a_new_version_is_loaded_with_the_serving_one_as_its_previous_and_a_first_with_none():
    kernel, reconciler, _ = setup()
    [v1] = kernel.programs
    assert kernel.previous == {v1: None}
    run(reconciler, node_program(source=V2))
    [v2] = kernel.programs
    assert kernel.previous[v2] == v1  # its maps are the ones v2 takes over
    # Another program of the namespace, same source: never handed this program's maps.
    run(reconciler, node_program(name="other", source=V2))
    [other] = [ref for ref in kernel.previous if ref.name == "other"]
    assert kernel.previous[other] is None
