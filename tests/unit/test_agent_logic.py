"""The agent's pure parts: selectors, parsing, cgroup layouts, status."""

from __future__ import annotations

from pathlib import Path

import pytest

from bpfleet_api import diagnostics, reasons, selectors
from node_agent import errors
from node_agent.cgroups import PodCgroupResolver, cgroup_v2_mount, pod_cgroup_candidates
from node_agent.kernel.backend import LoadedProgram
from node_agent.reconcile import ATTACHED, FAILED, PodReport, ProgramReport
from node_agent.status import MAX_BUILD_LOG
from tests.unit.builders import cluster_program, node_program, parsed, report_entry


@pytest.mark.parametrize(
    ("selector", "labels", "expected"),
    [
        ({}, {"a": "1"}, True),
        (None, {}, True),
        ({"matchLabels": {"a": "1"}}, {"a": "1", "b": "2"}, True),
        ({"matchLabels": {"a": "1"}}, {"a": "2"}, False),
        ({"matchExpressions": [{"key": "a", "operator": "In", "values": ["1", "2"]}]}, {"a": "2"}, True),
        ({"matchExpressions": [{"key": "a", "operator": "NotIn", "values": ["1"]}]}, {}, True),
        ({"matchExpressions": [{"key": "a", "operator": "Exists"}]}, {}, False),
        ({"matchExpressions": [{"key": "a", "operator": "DoesNotExist"}]}, {}, True),
    ],
)
def test_label_selectors(selector, labels, expected):
    assert selectors.matches(selector, labels) is expected


def test_parameters_become_defines_never_source_text():
    program = parsed(node_program(parameters={"PORT": 80, "NAME": 'a"b'}))
    assert dict(program.build.defines) == {"PORT": "80", "NAME": '"a\\"b"'}
    assert "PORT" not in program.build.source


def test_version_changes_with_anything_compiled_and_only_then():
    base = parsed(node_program()).ref.version
    assert parsed(node_program(selector={})).ref.version == base
    assert parsed(node_program(source="other")).ref.version != base
    assert parsed(node_program(parameters={"X": 1})).ref.version != base
    ingress = {"type": "CgroupSkb", "direction": "Ingress"}
    assert parsed(node_program(attach=ingress)).ref.version != base


def test_pod_cgroup_layouts_for_both_drivers():
    uid = "1234-ab"
    paths = {str(p) for p in pod_cgroup_candidates(uid, "Burstable")}
    assert paths == {
        "kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod1234_ab.slice",
        "kubepods/burstable/pod1234-ab",
    }
    guaranteed = {str(p) for p in pod_cgroup_candidates(uid, "Guaranteed")}
    assert guaranteed == {"kubepods.slice/kubepods-pod1234_ab.slice", "kubepods/pod1234-ab"}
    assert len(pod_cgroup_candidates(uid, None)) == 6


def test_resolver_finds_the_directory_kubelet_made(tmp_path: Path):
    made = tmp_path / "kubepods" / "besteffort" / "poduid-1"
    made.mkdir(parents=True)
    resolver = PodCgroupResolver(tmp_path)
    assert resolver.find("uid-1", "BestEffort") == made
    assert resolver.find("uid-1", None) == made
    assert resolver.find("uid-2", "BestEffort") is None


def test_cgroup_v2_mount_on_pure_and_hybrid_hosts(tmp_path: Path):
    (tmp_path / "pure").mkdir()
    (tmp_path / "pure" / "cgroup.controllers").touch()
    assert cgroup_v2_mount(tmp_path / "pure") == tmp_path / "pure"
    (tmp_path / "hybrid" / "unified").mkdir(parents=True)
    (tmp_path / "hybrid" / "unified" / "cgroup.procs").touch()
    assert cgroup_v2_mount(tmp_path / "hybrid") == tmp_path / "hybrid" / "unified"
    with pytest.raises(FileNotFoundError):
        cgroup_v2_mount(tmp_path / "none")


VERIFIER_LOG = """bpf: Failed to load program: Permission denied
0: R1=ctx() R10=fp0
1: (61) r0 = *(u32 *)(r1 +0)
R1 invalid mem access 'scalar'
processed 2 insns (limit 1000000) max_states_per_insn 0 total_states 0
"""


def test_headlines_pick_the_line_that_explains():
    assert diagnostics.headline(reasons.VERIFIER_REJECTED, VERIFIER_LOG) == "R1 invalid mem access 'scalar'"
    with_hint = VERIFIER_LOG + "\nHINT: The 'unknown opcode' can happen if you reference a global variable.\n"
    assert diagnostics.headline(reasons.VERIFIER_REJECTED, with_hint) == "R1 invalid mem access 'scalar'"
    compile_log = (
        "In file included from x.h:1:\nprogram.c:4:3: error: use of undeclared identifier 'y'\n1 error."
    )
    assert diagnostics.headline(reasons.COMPILE_ERROR, compile_log).startswith("program.c:4:3: error:")


def report(**kwargs) -> ProgramReport:
    return ProgramReport(namespace="shop", name="p-node-a", generation=4, version="v2", **kwargs)


def test_status_of_a_healthy_program():
    loaded = LoadedProgram(ref=None, prog_id=42, pin_dir="/sys/fs/bpf/bpfleet/shop/p/v2", maps=("traffic",))  # type: ignore[arg-type]
    status = report_entry(report(loaded=loaded, serving_version="v2", pods=[PodReport("a", "u1", ATTACHED)]))
    assert status["pods"] == {"selected": 1, "attached": 1, "failed": 0}
    assert status["programId"] == 42 and "servingVersion" not in status  # it is `version`
    assert status["generation"] == 4
    assert (status["ready"], status["reason"]) == (True, "Attached")
    assert "failures" not in status
    assert "buildLog" not in status
    assert "mapsKept" not in status and "mapsReset" not in status  # no update: left out


def test_status_says_which_maps_an_update_kept_and_which_it_reset():
    loaded = LoadedProgram(
        None, 43, "/sys/fs/bpf/bpfleet/shop/p/v3", ("hits", "traffic"), ("traffic",), ("hits",)
    )  # type: ignore[arg-type]
    status = report_entry(report(loaded=loaded, serving_version="v2"))
    assert (status["mapsKept"], status["mapsReset"]) == (["traffic"], ["hits"])
    assert (status["ready"], status["reason"]) == (True, "Attached")


def test_status_of_a_verifier_rejection_keeps_the_end_of_a_long_log():
    long_log = "noise line\n" * 1000 + VERIFIER_LOG
    status = report_entry(report(build_error=errors.VerifierRejected(long_log)))
    [failure] = status["failures"]
    assert failure["reason"] == reasons.VERIFIER_REJECTED
    assert len(failure["message"]) <= 2048 and "invalid mem access" in failure["message"]
    assert status["ready"] is False and "invalid mem access" in status["message"]
    assert status["servingVersion"] == ""  # nothing runs


def test_status_lists_failed_pods():
    pods = [PodReport("a", "u1", ATTACHED), PodReport("b", "u2", FAILED, reasons.ATTACH_FAILED, "EPERM")]
    status = report_entry(report(pods=pods, serving_version="v2"))
    assert status["failures"] == [{"pod": "b", "reason": reasons.ATTACH_FAILED, "message": "EPERM"}]
    assert status["pods"]["failed"] == 1


def test_status_carries_the_whole_build_log_bounded():
    log = "line\n" * 30000 + "R1 invalid mem access 'scalar'\n"
    status = report_entry(report(build_error=errors.VerifierRejected(log)))
    assert len(status["buildLog"]) <= MAX_BUILD_LOG == 8 * 1024
    assert status["buildLog"].endswith("R1 invalid mem access 'scalar'\n")
    healthy = report_entry(report(pods=[], serving_version="v2"))
    assert "buildLog" not in healthy


def test_a_node_without_kernel_headers_serves_nothing_and_says_why():
    from node_agent.features import NodeFeatures

    features = NodeFeatures(
        kernel="6.1.0",
        btf=True,
        tracefs=None,
        kprobes=False,
        program_types={"CgroupSkb": True},
        no_headers="no kernel headers to compile with: /lib/modules/6.1.0/build does not exist.",
    )
    assert features.unsupported("CgroupSkb").startswith("no kernel headers to compile with")
    assert features.as_status()["kernelHeaders"] is False
    served = features.as_status()["attachTypes"]
    assert served and not any(served.values())


def test_kprobe_and_kretprobe_on_one_function_are_different_programs():
    probe = parsed(cluster_program(attach={"type": "Kprobe", "function": "do_sys_openat2"}))
    ret = parsed(cluster_program(attach={"type": "Kretprobe", "function": "do_sys_openat2"}))
    assert ret.build.attach.retprobe and not probe.build.attach.retprobe
    assert probe.ref.version != ret.ref.version
