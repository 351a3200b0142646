"""Node-wide tracing programs, filtered to the selected pods; and kprobes where the kernel has none."""

from __future__ import annotations

from e2e.harness import wait_for
from e2e.kube import Kube, bpftool, cgroup_id, kernel_has_kprobes
from e2e.tests.programs import apply_ready, builtin, delete_leaves_no_trace, ebpf_program, refused_for_tenants


def counts(pin_path: str, map_name: str) -> dict[int, int]:
    entries = bpftool("map", "dump", "pinned", f"{pin_path}/maps/{map_name}") or []
    return {int(e["formatted"]["key"]): int(e["formatted"]["value"]) for e in entries}


def link_ids() -> set[int]:
    return {link["id"] for link in bpftool("link", "show") or []}


def test_tracepoint_counts_execs_of_selected_pods_only(kube: Kube, node_a, namespace: str):
    web = node_a.create_pod(namespace, "web-1", {"app": "web"})
    db = node_a.create_pod(namespace, "db-1", {"app": "db"})
    program = builtin(
        "exec-counter", "count_execs", {"type": "Tracepoint", "name": "sched:sched_process_exec"}
    )
    status = apply_ready(kube, node_a, namespace, program)
    [node_link] = [link for link in bpftool("link", "show") if link["prog_id"] == status["programId"]]
    assert node_link["type"] == "perf_event"

    before = counts(status["pinPath"], "execs").get(cgroup_id(web.pod_cgroup), 0)
    for pod in (web, db):
        assert pod.run(["/bin/sh", "-c", "/bin/true; /bin/true"], timeout=10).returncode == 0
    after = counts(status["pinPath"], "execs")
    assert after[cgroup_id(web.pod_cgroup)] - before >= 3  # sh and two /bin/true
    assert cgroup_id(db.pod_cgroup) not in after

    # Relabelled out of the selector: no longer counted.
    node_a.sim.set_labels(web, {"app": "other"})
    wait_for(
        "web deselected", lambda: kube.program(namespace, "exec-counter")["status"]["pods"]["selected"] == 0
    )
    frozen = counts(status["pinPath"], "execs")[cgroup_id(web.pod_cgroup)]
    assert web.run(["/bin/true"], timeout=10).returncode == 0
    assert counts(status["pinPath"], "execs")[cgroup_id(web.pod_cgroup)] == frozen

    delete_leaves_no_trace(kube, node_a, namespace, "exec-counter", [web, db])
    assert node_link["id"] not in link_ids()


def test_tracepoint_counts_syscalls_per_pod(kube: Kube, node_a, namespace: str):
    web = node_a.create_pod(namespace, "web-1", {"app": "web"})
    db = node_a.create_pod(namespace, "db-1", {"app": "db"})
    program = builtin(
        "syscall-counter", "count_syscalls", {"type": "Tracepoint", "name": "raw_syscalls:sys_enter"}
    )
    status = apply_ready(kube, node_a, namespace, program)
    web.send_udp("127.0.0.1", 9, count=50)
    db.send_udp("127.0.0.1", 9, count=50)
    seen = counts(status["pinPath"], "syscalls")
    assert seen[cgroup_id(web.pod_cgroup)] >= 50
    assert cgroup_id(db.pod_cgroup) not in seen
    delete_leaves_no_trace(kube, node_a, namespace, "syscall-counter", [web, db])


KPROBE_SOURCE = "int on_open(void *ctx) { return 0; }\n"


def test_a_tenants_kprobe_is_refused_and_harms_nothing(kube: Kube, node_a, namespace: str):
    # A kprobe sees every process of the node: a ClusterEbpfProgram's (on a node without kprobes it
    # fails there with UnsupportedOnNode: see test_cluster_programs).
    web = node_a.create_pod(namespace, "web-1", {"app": "web"})
    counter = apply_ready(
        kube,
        node_a,
        namespace,
        builtin("dns-query-counter", "count_dns_queries", {"type": "CgroupSkb", "direction": "Egress"}),
    )
    probe = ebpf_program(
        "open-probe",
        {
            "source": {"inline": KPROBE_SOURCE},
            "function": "on_open",
            "attach": {"type": "Kprobe", "function": "do_sys_openat2"},
            "podSelector": {},
        },
    )
    assert "Kprobe" in refused_for_tenants(kube, namespace, probe)
    assert not (node_a.bpffs_root / namespace / "open-probe").exists()

    node_state = kube.custom.get_cluster_custom_object("bpfleet.io", "v1alpha1", "bpfleetnodes", node_a.name)
    # What the node reports is what its kernel has, whichever it is.
    assert node_state["status"]["kprobes"] is kernel_has_kprobes()
    assert node_state["status"]["attachTypes"]["Kprobe"] is kernel_has_kprobes()
    assert node_state["status"]["attachTypes"]["CgroupSkb"] is True
    [owner] = node_state["metadata"]["ownerReferences"]  # garbage-collected with its Node
    assert (owner["kind"], owner["name"]) == ("Node", node_a.name)

    # The agent and the other program are untouched.
    assert node_a.agent.alive
    assert kube.is_ready(namespace, "dns-query-counter")
    assert (
        kube.node_program(namespace, "dns-query-counter", node_a.name)["status"]["programId"]
        == counter["programId"]
    )
    assert web.send_udp("127.0.0.1", 53, count=1).sent == 1
