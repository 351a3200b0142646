"""Kubernetes Events on an EbpfProgram for the transitions a user cares about."""

from __future__ import annotations

from e2e.harness import wait_for
from e2e.kube import Kube
from e2e.tests.programs import builtin, ebpf_program


def reasons(kube: Kube, namespace: str, name: str) -> dict[str, tuple[str, str]]:
    """reason -> (type, message) of the events about the program."""
    return {e.reason: (e.type, e.message) for e in kube.events(namespace, name)}


def test_accepted_rolled_out_failed_and_deleted(kube: Kube, node_a, namespace: str):
    node_a.create_pod(namespace, "web-1", {"app": "web"})
    counter = builtin("dns-query-counter", "count_dns_queries", {"type": "CgroupSkb", "direction": "Egress"})
    kube.apply(namespace, counter)
    wait_for(
        "Accepted and RolledOut",
        lambda: {"Accepted", "RolledOut"} <= set(reasons(kube, namespace, "dns-query-counter")),
    )
    kind, message = reasons(kube, namespace, "dns-query-counter")["RolledOut"]
    assert (kind, message) == ("Normal", "running on 1 of 1 nodes")
    # Those two alone: nothing per handler run (kopf posts its own lines with reason "Logging").
    assert set(reasons(kube, namespace, "dns-query-counter")) == {"Accepted", "RolledOut"}

    broken = ebpf_program(
        "broken",
        {
            "source": {"inline": "int f(struct __sk_buff *skb) { return nope; }\n"},
            "function": "f",
            "attach": {"type": "CgroupSkb", "direction": "Ingress"},
            "podSelector": {},
        },
    )
    kube.apply(namespace, broken)
    wait_for(
        "a CompileError warning", lambda: "CompileError" in reasons(kube, namespace, "broken"), timeout=15
    )
    kind, message = reasons(kube, namespace, "broken")["CompileError"]
    assert kind == "Warning"
    assert f"node {node_a.name}" in message and "use of undeclared identifier 'nope'" in message

    kube.kubectl("delete", "ebpf", "-n", namespace, "dns-query-counter", "--wait=true", "--timeout=20s")
    wait_for("Deleted", lambda: "Deleted" in reasons(kube, namespace, "dns-query-counter"))
    assert reasons(kube, namespace, "dns-query-counter")["Deleted"] == ("Normal", "unloaded from every node")
