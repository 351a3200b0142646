"""What the suites share: programs' manifests and sources; apply a program, wait for it, remove it and
check no trace is left."""

from __future__ import annotations

from typing import Any

from bpfleet_api import names
from e2e.harness import wait_for
from e2e.kube import Kube, cgroup_programs

# Counts execs in `execs` by the pid that exec'd: no pod filter of its own.
EXECS_BY_PID = """
BPF_HASH(execs, u32, u64, 4096);
int count_execs(void *ctx) {
    u32 pid = bpf_get_current_pid_tgid() >> 32;
    u64 zero = 0, *seen = execs.lookup_or_try_init(&pid, &zero);
    if (seen)
        __sync_fetch_and_add(seen, 1);
    return 0;
}
"""


def ebpf_program(name: str, spec: dict[str, Any]) -> dict[str, Any]:
    return _manifest(names.PROGRAM_KIND, name, spec)


def cluster_program(name: str, spec: dict[str, Any]) -> dict[str, Any]:
    return _manifest(names.CLUSTER_PROGRAM_KIND, name, spec)


def _manifest(kind: str, name: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": names.API_VERSION, "kind": kind, "metadata": {"name": name}, "spec": spec}


SKB_EGRESS = {"type": "CgroupSkb", "direction": "Egress"}


def inline(
    name: str, source: str, function: str, attach: dict[str, Any], pods: dict[str, Any] | None = None
) -> dict[str, Any]:
    """An EbpfProgram of an inline source, for the pods labelled app=web unless `pods` says."""
    spec = {"source": {"inline": source}, "function": function, "attach": attach}
    spec["podSelector"] = pods if pods is not None else {"matchLabels": {"app": "web"}}
    return ebpf_program(name, spec)


def builtin(name: str, function: str, attach: dict[str, Any], **spec: Any) -> dict[str, Any]:
    return ebpf_program(
        name,
        {
            "source": {"builtin": name},
            "function": function,
            "attach": attach,
            "podSelector": {"matchLabels": {"app": "web"}},
            **spec,
        },
    )


def apply_ready(kube: Kube, node: Any, namespace: str, program: dict[str, Any]) -> dict[str, Any]:
    """Applies, waits for READY True, and returns its status entry in `node`'s EbpfNodeState."""
    name = program["metadata"]["name"]
    kube.apply(namespace, program)
    wait_for(f"{name} Ready", lambda: kube.is_ready(namespace, name), timeout=15)
    return kube.node_program(namespace, name, node.name)["status"]


def delete_leaves_no_trace(kube: Kube, node: Any, namespace: str, name: str, pods: list[Any]) -> None:
    """Deletes the program and checks that attachments, pins and API objects are all gone."""
    kube.kubectl("delete", "ebpf", "-n", namespace, name, "--wait=true", "--timeout=20s")
    assert kube.program(namespace, name) is None
    assert kube.node_programs(namespace, name) == []
    for pod in pods:
        assert cgroup_programs(pod.pod_cgroup) == [], f"{name} still attached to {pod.name}"
    assert not (node.bpffs_root / namespace / name.replace(".", "_")).exists()


def refused_for_tenants(kube: Kube, namespace: str, program: dict[str, Any]) -> str:
    """Applies an EbpfProgram that only a ClusterEbpfProgram may be, and returns why it was refused:
    by the API server (the CRD's rules), or else by the agent (InvalidSpec in status), which checks
    the same whatever the API server let through. Either message must name ClusterEbpfProgram."""
    name = program["metadata"]["name"]
    try:
        kube.apply(namespace, program)
    except RuntimeError as e:  # refused at the door
        assert "ClusterEbpfProgram" in str(e), e
        assert kube.program(namespace, name) is None
        return str(e)
    wait_for(
        f"{name} refused", lambda: (kube.condition(namespace, name) or {}).get("reason") == "InvalidSpec"
    )
    message = kube.condition(namespace, name)["message"]
    assert "ClusterEbpfProgram" in message, message
    return message
