"""Acceptance: a slow compile blocks no one. While one program takes ~10 s to compile, a new pod
selected by another program is attached, judged by the kernel (the link on the pod's cgroup),
before that compile ends."""

from __future__ import annotations

import time

from e2e.harness import wait_for
from e2e.kube import Kube, cgroup_programs
from e2e.tests.programs import SKB_EGRESS, inline

ALLOW = "int allow(struct __sk_buff *skb) { return 1; }"
# Sandboxed on this 2-core machine, 24 such functions took 9 s of clang (4,096 arithmetic blocks
# each, all compiled though only `keep` is loaded); 26 make it ~10 s in under 3 KiB of source.
SLOW_FUNCTIONS = 26
SLOW_DEPTH = 5


def slow_source(functions: int = SLOW_FUNCTIONS, depth: int = SLOW_DEPTH) -> str:
    """A valid program whose compile takes long: macros expand each function to 4**depth blocks."""
    lines = ["#define B0(x) x = x * 2654435761u + (x >> 7) ^ 0x9e37u;"]
    lines += [f"#define B{d}(x) B{d - 1}(x) B{d - 1}(x) B{d - 1}(x) B{d - 1}(x)" for d in range(1, depth + 1)]
    body = f"volatile unsigned int x = skb->len; B{depth}(x) return x & 1;"
    lines += [f"int slow{f}(struct __sk_buff *skb) {{ {body} }}" for f in range(functions)]
    lines.append("int keep(struct __sk_buff *skb) { return 1; }")
    return "\n".join(lines)


def compiling(node_a, namespace: str, program: str) -> bool:
    return any(
        '"compiling program"' in line and f'"{namespace}/{program}"' in line
        for line in node_a.agent.log_path.read_text().splitlines()
    )


def queued(kube: Kube, namespace: str, node: str) -> bool:
    status = kube.node_program(namespace, "slow", node).get("status") or {}
    return status.get("reason") == "Queued"


def test_a_new_pod_is_attached_while_another_program_compiles(kube: Kube, node_a, namespace: str):
    kube.apply(namespace, inline("fast", ALLOW, "allow", SKB_EGRESS))
    wait_for("the fast program Ready", lambda: kube.is_ready(namespace, "fast"), timeout=30)
    kube.apply(namespace, inline("slow", slow_source(), "keep", SKB_EGRESS, {"matchLabels": {"app": "slow"}}))
    wait_for("the slow compile to start", lambda: compiling(node_a, namespace, "slow"), timeout=30)
    started = time.monotonic()

    pod = node_a.create_pod(namespace, "web-1", {"app": "web"})
    took = wait_for("the new pod attached", lambda: cgroup_programs(pod.pod_cgroup), timeout=5, interval=0.01)
    # Judged by bpffs: the slow version is not pinned yet, so its compile is still running.
    assert not list(node_a.bpffs_root.glob(f"{namespace}/slow/*/prog")), "the slow compile ended first"
    wait_for("its status entry Queued", lambda: queued(kube, namespace, node_a.name), timeout=5)

    wait_for("the slow program Ready", lambda: kube.is_ready(namespace, "slow"), timeout=120, interval=0.2)
    compile_seconds = time.monotonic() - started
    assert took < compile_seconds, (took, compile_seconds)
    print(f"attached after {took * 1000:.0f} ms, while a compile took {compile_seconds:.1f} s")
