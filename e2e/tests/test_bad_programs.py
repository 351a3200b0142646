"""Acceptance: a program that does not compile or that the verifier rejects fails loudly, alone."""

from __future__ import annotations

import json

from e2e.harness import wait_for
from e2e.kube import Kube, cgroup_programs
from e2e.tests.programs import inline
from e2e.tools import REPO_ROOT

COUNTER = REPO_ROOT / "examples" / "pod-traffic-counter.yaml"
COUNTER_NAME = "web-egress-traffic"
SKB_INGRESS = {"type": "CgroupSkb", "direction": "Ingress"}

# The error is on line 3 of the user's source.
DOES_NOT_COMPILE = """\
int broken(struct __sk_buff *skb)
{
    return undefined_variable;
}
"""

# Reads memory through a scalar: the verifier refuses it.
VERIFIER_REJECTS = """\
#include <uapi/linux/bpf.h>
int reject(struct __sk_buff *skb)
{
    int *pointer = (int *)(long)skb->len;
    return *pointer;
}
"""


def failure_of(kube: Kube, namespace: str, name: str) -> tuple[dict, dict]:
    status = kube.program(namespace, name)["status"]
    [failure] = status["failures"]
    ready = next(c for c in status["conditions"] if c["type"] == "Ready")
    return failure, ready


def test_compile_and_verifier_failures_are_reported_and_harm_nothing(kube: Kube, node_a, namespace: str):
    web = node_a.create_pod(namespace, "web-1", {"app": "web"})
    kube.apply(namespace, COUNTER)
    wait_for("counter ready", lambda: kube.is_ready(namespace, COUNTER_NAME), timeout=10)
    counter_id = kube.node_program(namespace, COUNTER_NAME, node_a.name)["status"]["programId"]

    kube.apply(namespace, inline("does-not-compile", DOES_NOT_COMPILE, "broken", SKB_INGRESS))
    kube.apply(namespace, inline("verifier-rejects", VERIFIER_REJECTS, "reject", SKB_INGRESS))
    for name, reason in (("does-not-compile", "CompileError"), ("verifier-rejects", "VerifierRejected")):
        wait_for(
            f"{name} failing with {reason}",
            lambda n=name, r=reason: kube.condition(namespace, n)["reason"] == r,
            timeout=15,
        )

    failure, ready = failure_of(kube, namespace, "does-not-compile")
    assert (failure["reason"], failure["node"]) == ("CompileError", node_a.name)
    assert "program.c:3:12: error: use of undeclared identifier 'undefined_variable'" in failure["message"]
    assert ready["reason"] == "CompileError" and "undefined_variable" in ready["message"]
    stalled = kube.condition(namespace, "does-not-compile", "Stalled")
    assert stalled["status"] == "True"

    failure, ready = failure_of(kube, namespace, "verifier-rejects")
    assert failure["reason"] == "VerifierRejected"
    assert "invalid mem access" in failure["message"]
    assert ready["reason"] == "VerifierRejected" and "invalid mem access" in ready["message"]
    # The whole verifier log is in the node's status entry, from the first instruction to the statistics.
    build_log = kube.node_program(namespace, "verifier-rejects", node_a.name)["status"]["buildLog"]
    assert "0: R1=ctx()" in build_log and "processed" in build_log

    # kubectl shows it without digging.
    printed = kube.kubectl("get", "ebpf", "-n", namespace, "-o", "wide")
    assert "VerifierRejected" in printed and "CompileError" in printed

    # Everything else on the node is untouched: the counter still runs on the pod, alone.
    assert kube.is_ready(namespace, COUNTER_NAME)
    assert [p["id"] for p in cgroup_programs(web.pod_cgroup)] == [counter_id]
    assert node_a.agent.alive

    # Fixing the source rolls it out.
    fixed = inline(
        "does-not-compile", DOES_NOT_COMPILE.replace("undefined_variable", "1"), "broken", SKB_INGRESS
    )
    kube.apply(namespace, fixed)
    wait_for("fixed program ready", lambda: kube.is_ready(namespace, "does-not-compile"), timeout=15)
    assert len(cgroup_programs(web.pod_cgroup)) == 2


def test_config_map_source_rolls_when_edited(kube: Kube, node_a, namespace: str):
    web = node_a.create_pod(namespace, "web-1", {"app": "web"})
    source_v1 = "int allow(struct __sk_buff *skb) { return 1; }\n"
    kube.kubectl("create", "configmap", "-n", namespace, "prog", f"--from-literal=prog.c={source_v1}")
    program = inline("from-config-map", "", "allow", SKB_INGRESS)
    program["spec"]["source"] = {"configMapRef": {"name": "prog", "key": "prog.c"}}
    kube.apply(namespace, program)
    wait_for("ready", lambda: kube.is_ready(namespace, "from-config-map"), timeout=15)
    [first] = cgroup_programs(web.pod_cgroup)

    source_v2 = "int allow(struct __sk_buff *skb) { return 1 + 0 * skb->len; }\n"
    patch = {"data": {"prog.c": source_v2}}
    kube.kubectl("patch", "configmap", "-n", namespace, "prog", "--type=merge", "-p", json.dumps(patch))
    wait_for(
        "new version attached instead of the old",
        lambda: [p["id"] for p in cgroup_programs(web.pod_cgroup)] not in ([], [first["id"]]),
        timeout=15,
    )
    wait_for("ready again", lambda: kube.is_ready(namespace, "from-config-map"), timeout=15)
    assert len(cgroup_programs(web.pod_cgroup)) == 1


def test_missing_config_map_stalls_with_a_clear_reason(kube: Kube, node_a, namespace: str):
    program = inline("missing-source", "", "allow", SKB_INGRESS)
    program["spec"]["source"] = {"configMapRef": {"name": "nowhere", "key": "prog.c"}}
    kube.apply(namespace, program)
    wait_for("stalled", lambda: kube.condition(namespace, "missing-source", "Stalled")["status"] == "True")
    ready = kube.condition(namespace, "missing-source")
    assert (
        ready["reason"] == "SourceNotFound"
        and f"ConfigMap {namespace}/nowhere does not exist" in ready["message"]
    )
