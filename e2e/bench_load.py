"""The agent under load: many programs applied at once on a node full of pods.

K pod-traffic-counter programs, each its own program (so each compiles once on the node), all
selecting the same P running pods, are applied in one `kubectl apply`; the figure is the time until
every one is Ready (which the operator says only once the agent attached it to all P pods). Then
the agent's resident memory (its own process; compile workers are children that have exited) and
its CPU while nothing changes.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import yaml

from e2e.harness import log, wait_for
from e2e.kube import Kube, current_condition
from e2e.podsim import PodSimulator

SELECTOR = {"matchLabels": {"app": "load"}}
_CLOCK_TICKS = 100  # USER_HZ: the unit of utime and stime in /proc/<pid>/stat on Linux


@dataclass(frozen=True)
class LoadFigures:
    programs: int
    pods: int
    apply_to_ready: float  # seconds
    rss_bytes: int
    idle_cpu: float  # fraction of one core
    idle_seconds: float

    def lines(self) -> list[str]:
        return [
            f"{self.programs} programs x {self.pods} pods, apply -> all Ready   {self.apply_to_ready:7.2f} s",
            f"agent RSS at that load (compile workers excluded)   {self.rss_bytes / 2**20:7.1f} MiB",
            f"agent CPU when idle ({self.idle_seconds:.0f} s)                   "
            f"{100 * self.idle_cpu:7.2f} % of a core",
        ]


def _counter(name: str) -> dict:
    return {
        "apiVersion": "bpfleet.io/v1alpha1",
        "kind": "EbpfProgram",
        "metadata": {"name": name},
        "spec": {
            "source": {"builtin": "pod-traffic-counter"},
            "function": "count_packets",
            "attach": {"type": "CgroupSkb", "direction": "Egress"},
            "podSelector": SELECTOR,
        },
    }


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for process {pid}")


def cpu_seconds(pid: int) -> float:
    # The fields after the command (which may hold spaces) start after its closing parenthesis.
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    utime, stime = int(fields[11]), int(fields[12])
    return (utime + stime) / _CLOCK_TICKS


def _all_ready(kube: Kube, namespace: str, names: list[str]) -> bool:
    by_name = {p["metadata"]["name"]: p for p in kube.programs(namespace)}
    for name in names:
        ready = current_condition(by_name.get(name), "Ready")
        if ready is None or ready["status"] != "True":
            return False
    return True


def measure(
    kube: Kube, sim: PodSimulator, agent_pid: int, programs: int, pods: int, idle_seconds: float = 20.0
) -> LoadFigures:
    namespace = "bench-load"
    kube.kubectl("create", "namespace", namespace)
    log("starting pods", pods=pods)
    for i in range(pods):
        sim.create_pod(namespace, f"load-{i}", {"app": "load"})
    names = [f"load-{i}" for i in range(programs)]
    manifests = "---\n".join(yaml.safe_dump(_counter(name)) for name in names)
    log("applying programs at once", programs=programs)
    start = time.monotonic()
    kube.apply(namespace, manifests)
    wait_for(f"{programs} programs Ready", lambda: _all_ready(kube, namespace, names), 600, 0.05)
    elapsed = time.monotonic() - start
    rss = rss_bytes(agent_pid)
    log("measuring the idle agent", seconds=idle_seconds)
    before = cpu_seconds(agent_pid)
    time.sleep(idle_seconds)
    idle = (cpu_seconds(agent_pid) - before) / idle_seconds
    kube.kubectl("delete", "ebpf", "--all", "-n", namespace, "--wait=true", "--timeout=300s")
    return LoadFigures(programs, pods, elapsed, rss, idle, idle_seconds)
