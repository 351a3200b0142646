"""The agent stopped as kubelet stops a pod (SIGTERM to its processes) at random moments of its
start: while it imports, while it probes the kernel and starts its spare compile worker, while it
syncs its caches, or once it runs. Each stop leaves no compile worker and no compile cgroup of the
node behind, and the program it was running stays attached throughout."""

from __future__ import annotations

import os
import random
import time
from pathlib import Path

import pytest

from e2e.bpf_census import compile_cgroups
from e2e.harness import wait_for
from e2e.kube import Kube, cgroup_programs
from e2e.tests.programs import apply_ready, inline
from node_agent.kernel.compile_cgroup import node_prefix

pytestmark = pytest.mark.e2e

TRIES = int(os.environ.get("BPFLEET_STOP_TRIES", "12"))
SEED = int(os.environ.get("BPFLEET_STOP_SEED", str(random.randrange(1 << 30))))
COUNTER = """
BPF_ARRAY(stopped, u64, 1);
int count_egress(struct __sk_buff *skb) {
    int key = 0;
    u64 *n = stopped.lookup(&key);
    if (n) __sync_fetch_and_add(n, 1);
    return 1;
}
"""


def in_group(pgid: int) -> list[int]:
    """The live processes of process group `pgid` (the agent's, and its workers')."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if fields[0] not in ("Z", "X") and int(fields[2]) == pgid:
            found.append(int(stat.parent.name))
    return found


def test_an_agent_stopped_while_it_starts_leaves_no_compile_worker_or_cgroup(
    kube: Kube, node_a, namespace: str
):
    pod = node_a.create_pod(namespace, "web-0", {"app": "web"})
    attach = {"type": "CgroupSkb", "direction": "Egress"}
    status = apply_ready(kube, node_a, namespace, inline("counter", COUNTER, "count_egress", attach))
    mine = node_prefix(node_a.name)
    rng = random.Random(SEED)
    try:
        for attempt in range(TRIES):
            node_a.agent.stop()
            node_a.agent.start()
            pid = node_a.agent.process.pid
            time.sleep(rng.uniform(0.0, 2.5))
            node_a.agent.stop()

            where = f"try {attempt} (BPFLEET_STOP_SEED={SEED})"
            wait_for(f"{where}: the agent's processes gone", lambda p=pid: not in_group(p), timeout=10)
            left = {c for c in compile_cgroups() if c.name.startswith(mine)}
            assert not left, f"{where}: compile cgroups left: {sorted(map(str, left))}"
            assert [p["id"] for p in cgroup_programs(pod.pod_cgroup)] == [status["programId"]], where
    finally:
        node_a.agent.start()
