"""ClusterEbpfProgram: what a cluster admin may do that a namespaced program may not, through the
full path: node interfaces, node-wide tracing, kprobes where the node has them, many namespaces."""

from __future__ import annotations

import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from e2e.harness import wait_for
from e2e.kube import Kube, bpftool, cgroup_programs, kernel_has_kprobes
from e2e.netdev import host_veths
from e2e.tests.programs import cluster_program
from e2e.tests.test_tenancy import UNFILTERED_EXEC_COUNTER, map_values
from e2e.tools import REPO_ROOT
from node_agent.kernel import syscalls


@pytest.fixture
def cluster_programs(kube: Kube, node_a, system_namespace: str) -> Iterator[list[str]]:
    """Names of the ClusterEbpfPrograms a test creates; deleted (and waited for) afterwards."""
    created: list[str] = []
    try:
        yield created
    finally:
        for name in created:
            kube.kubectl("delete", "clusterebpfprogram", name, "--wait=true", "--timeout=30s", check=False)


def apply_cluster_ready(kube: Kube, node, created: list[str], program: dict[str, Any]) -> dict[str, Any]:
    name = program["metadata"]["name"]
    created.append(name)
    kube.apply("default", program)
    wait_for(f"{name} Ready", lambda: kube.cluster_is_ready(name), timeout=30)
    return kube.cluster_node_program(name, node.name)["status"]


@pytest.fixture
def host_interfaces() -> Iterator[tuple[str, str]]:
    """A veth pair in the host's network namespace, as a node interface would be."""
    with host_veths() as (_, make):
        yield make("a", "b")


PASS_TC = "int pass(struct __sk_buff *skb) { return 0; }\n"


def links_of(prog_id: int) -> list[dict[str, Any]]:
    return [link for link in bpftool("link", "show") or [] if link.get("prog_id") == prog_id]


def pinned_link_ifindex(pin: Path) -> int:
    """The interface a pinned tcx link is attached to, as the kernel says (this bpftool predates
    tcx and prints no interface for it)."""
    with syscalls.closing_fd(syscalls.obj_get(str(pin))) as fd:
        return syscalls.link_info(fd).target_id


def test_tc_on_node_interfaces_by_pattern(kube: Kube, node_a, cluster_programs, host_interfaces):
    a, b = host_interfaces
    status = apply_cluster_ready(
        kube,
        node_a,
        cluster_programs,
        cluster_program(
            f"host-tc-{uuid.uuid4().hex[:6]}",
            {
                "source": {"inline": PASS_TC},
                "function": "pass",
                "scope": "Node",
                "attach": {"type": "Tc", "direction": "Ingress", "interface": f"{a[:-1]}*"},
            },
        ),
    )
    assert len(links_of(status["programId"])) == 2  # bpftool agrees: one link per interface
    for interface in (a, b):
        ifindex = int(Path(f"/sys/class/net/{interface}/ifindex").read_text())
        assert pinned_link_ifindex(Path(status["pinPath"]) / "links" / f"if-{interface}") == ifindex


@pytest.mark.parametrize(
    ("source", "function", "counts"),
    [
        ({"inline": UNFILTERED_EXEC_COUNTER}, "count_all", "execs"),
        # A builtin written for pods calls bpfleet_pod_selected(): true for every task at scope Node.
        ({"builtin": "exec-counter"}, "count_execs", "execs"),
    ],
    ids=["inline", "builtin"],
)
def test_node_wide_tracing_sees_host_processes(
    kube: Kube, node_a, cluster_programs, source, function, counts
):
    status = apply_cluster_ready(
        kube,
        node_a,
        cluster_programs,
        cluster_program(
            f"all-execs-{uuid.uuid4().hex[:6]}",
            {
                "source": source,
                "function": function,
                "scope": "Node",
                "attach": {"type": "Tracepoint", "name": "sched:sched_process_exec"},
            },
        ),
    )
    before = sum(map_values(status["pinPath"], counts))
    for _ in range(5):
        subprocess.run(["/bin/true"], check=True)
    assert sum(map_values(status["pinPath"], counts)) >= before + 5


def test_kprobe_runs_where_the_node_has_kprobes(kube: Kube, node_a, cluster_programs):
    node_state = kube.custom.get_cluster_custom_object("bpfleet.io", "v1alpha1", "bpfleetnodes", node_a.name)
    has_kprobes = node_state["status"]["kprobes"]
    assert has_kprobes is kernel_has_kprobes()  # the node reports what its kernel has
    name = f"open-probe-{uuid.uuid4().hex[:6]}"
    cluster_programs.append(name)
    kube.apply(
        "default",
        cluster_program(
            name,
            {
                "source": {"inline": "int on_open(void *ctx) { return 0; }\n"},
                "function": "on_open",
                "scope": "Node",
                "attach": {"type": "Kprobe", "function": "do_sys_openat2"},
            },
        ),
    )
    if has_kprobes:
        wait_for("kprobe Ready", lambda: kube.cluster_is_ready(name), timeout=30)
        status = kube.cluster_node_program(name, node_a.name)["status"]
        assert any(link["prog_id"] == status["programId"] for link in bpftool("link", "show") or [])
    else:
        wait_for(
            "UnsupportedOnNode",
            lambda: (kube.cluster_condition(name) or {}).get("reason") == "UnsupportedOnNode",
            timeout=30,
        )
        assert "kprobes are not available on this kernel" in kube.cluster_condition(name)["message"]
    assert node_a.agent.alive


def test_pods_of_selected_namespaces(kube: Kube, node_a, cluster_programs, namespace: str):
    other = f"t-{uuid.uuid4().hex[:8]}"
    kube.kubectl("create", "namespace", other)
    try:
        kube.kubectl("label", "namespace", namespace, "team=blue")
        ours = node_a.create_pod(namespace, "web-1", {"app": "web"})
        theirs = node_a.create_pod(other, "web-1", {"app": "web"})
        status = apply_cluster_ready(
            kube,
            node_a,
            cluster_programs,
            cluster_program(
                f"blue-traffic-{uuid.uuid4().hex[:6]}",
                {
                    "source": {"builtin": "pod-traffic-counter"},
                    "function": "count_packets",
                    "attach": {"type": "CgroupSkb", "direction": "Egress"},
                    "namespaceSelector": {"matchLabels": {"team": "blue"}},
                    "podSelector": {"matchLabels": {"app": "web"}},
                },
            ),
        )
        assert [p["id"] for p in cgroup_programs(ours.pod_cgroup)] == [status["programId"]]
        assert cgroup_programs(theirs.pod_cgroup) == []

        # The other namespace joins by label: its pod is attached too.
        kube.kubectl("label", "namespace", other, "team=blue")
        wait_for(
            "pod of the newly selected namespace attached",
            lambda: [p["id"] for p in cgroup_programs(theirs.pod_cgroup)] == [status["programId"]],
            timeout=30,
        )
    finally:
        for pod in [p for p in node_a.pods if p.namespace == other]:
            node_a.delete_pod(pod)
        kube.kubectl("delete", "namespace", other, "--wait=false")


@pytest.mark.parametrize(
    "example", sorted(p.name for p in (REPO_ROOT / "examples").glob("cluster-*.yaml")), ids=str
)
def test_every_cluster_example_runs(kube: Kube, node_a, cluster_programs, example: str):
    # edge-no-telnet selects edge nodes only: none here, so it is Ready on no node and touches no
    # interface of this host.
    manifest = yaml.safe_load((REPO_ROOT / "examples" / example).read_text())
    name = manifest["metadata"]["name"]
    cluster_programs.append(name)
    kube.apply("default", manifest)
    wait_for(f"{name} Ready", lambda: kube.cluster_is_ready(name), timeout=30)
