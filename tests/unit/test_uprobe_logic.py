"""Uprobe and Uretprobe in the agent's pure logic: kernel types, versions, features, and the
container a pod's binary is looked up in."""

from __future__ import annotations

from typing import Any

from bpfleet_api import reasons
from node_agent.features import NodeFeatures
from node_agent.kernel import attach_types as at
from node_agent.model import Pod
from node_agent.reconcile import ATTACHED, FAILED, WAITING, Reconciler
from tests.unit.builders import node_program, parsed, pod
from tests.unit.fakes import FakeBackend, FakeCgroups

UPROBE = {"type": "Uprobe", "binary": "/bin/target", "symbol": "bpfleet_probe_target"}


def test_uprobes_are_kprobe_programs_on_perf_events_filtered_per_binary():
    entry = at.kernel_attach(UPROBE)
    ret = at.kernel_attach(
        {"type": "Uretprobe", "binary": "/usr/lib/libc.so.6", "offset": 4096, "container": "app"}
    )
    assert (entry.prog_type, entry.attach_type, entry.scope) == (
        at.PROG_TYPE_KPROBE,
        at.PERF_EVENT,
        at.PER_BINARY_FILTERED,
    )
    assert (entry.target, entry.symbol, entry.offset, entry.retprobe, entry.container) == (
        "/bin/target",
        "bpfleet_probe_target",
        0,
        False,
        "",
    )
    assert (ret.target, ret.symbol, ret.offset, ret.retprobe, ret.container) == (
        "/usr/lib/libc.so.6",
        "",
        4096,
        True,
        "app",
    )
    assert at.PER_BINARY_FILTERED in at.FILTERED_SCOPES  # compiled with the bpfleet_pods prelude


def version(attach: dict[str, Any]) -> str:
    return parsed(node_program(attach=attach)).ref.version


def test_each_uprobe_field_makes_a_new_version():
    variants = [
        UPROBE,
        {**UPROBE, "type": "Uretprobe"},
        {**UPROBE, "binary": "/bin/other"},
        {**UPROBE, "symbol": "other"},
        {"type": "Uprobe", "binary": "/bin/target", "offset": 4096},
        {"type": "Uprobe", "binary": "/bin/target", "offset": 8192},
        {**UPROBE, "container": "app"},
    ]
    assert len({version(v) for v in variants}) == len(variants)


def test_uprobes_need_the_uprobe_event_source():
    with_uprobes = NodeFeatures(
        kernel="6.18.0", btf=True, tracefs=None, kprobes=False, uprobes=True, program_types={"Uprobe": True}
    )
    without = NodeFeatures(
        kernel="6.18.0", btf=True, tracefs=None, kprobes=False, uprobes=False, program_types={"Uprobe": True}
    )
    assert with_uprobes.unsupported("Uprobe") is None  # no tracefs needed: the PMU is enough
    assert without.unsupported("Uprobe") == (
        "uprobes are not available on this kernel (6.18.0: no uprobe event source)"
    )
    assert with_uprobes.as_status()["attachTypes"]["Uprobe"] is True
    assert with_uprobes.as_status()["attachTypes"]["Uretprobe"] is False  # the program type did not load


def with_containers(obj: dict[str, Any], **ids: str) -> dict[str, Any]:
    obj["status"]["containerStatuses"] = [
        {"name": n, "containerID": f"containerd://{i}"} for n, i in ids.items()
    ]
    return obj


def test_pods_know_their_started_containers_by_name():
    parsed = Pod.from_object(with_containers(pod("web-1"), app="abc123", sidecar="def456"))
    assert parsed.containers == {"app": "abc123", "sidecar": "def456"}
    assert Pod.from_object(pod("web-2")).containers == {}


def test_a_named_container_is_passed_to_the_backend_and_its_absence_reported():
    kernel, cgroups = FakeBackend(), FakeCgroups({"uid-web-1", "uid-web-2", "uid-web-3"})
    program = node_program(attach={**UPROBE, "container": "app"})
    pods = [
        with_containers(pod("web-1", {"app": "web"}), app="abc123", sidecar="def456"),
        with_containers(pod("web-2", {"app": "web"}), sidecar="def456"),
        pod("web-3", {"app": "web"}, phase="Pending"),
    ]
    result = Reconciler(kernel, cgroups).run([parsed(program)], [Pod.from_object(p) for p in pods])
    [report] = result.reports
    states = {p.name: (p.state, p.reason, p.message) for p in report.pods}
    assert states["web-1"] == (ATTACHED, "", "")
    assert states["web-2"] == (FAILED, reasons.ATTACH_FAILED, "the pod has no started container app")
    assert states["web-3"] == (WAITING, reasons.ATTACH_FAILED, "the pod has no started container app")
    assert kernel.containers == {"uid-web-1": "abc123"}


def test_without_a_container_name_any_process_of_the_pod_will_do():
    kernel, cgroups = FakeBackend(), FakeCgroups({"uid-web-1"})
    pods = [Pod.from_object(with_containers(pod("web-1", {"app": "web"}), app="abc123"))]
    Reconciler(kernel, cgroups).run([parsed(node_program(attach=UPROBE))], pods)
    assert kernel.containers == {"uid-web-1": ""}
