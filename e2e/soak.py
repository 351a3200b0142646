"""Soak: pod churn and program updates on two nodes for a long time; nothing may grow.

  python -m e2e.soak [--minutes 60] [--pods-per-minute 30] [--update-seconds 60]   (make soak)

Two programs select the pods: the traffic counter (a builtin, never changed) and an inline program
whose parameter changes every --update-seconds (a new version, moved into every link in place).
Pods are created and deleted, --pods-per-minute of each, alternately on both nodes, keeping
PODS_PER_NODE on each. At the start (after one round of churn) and at the end (after the churn
stopped and the status converged), it prints each agent's RSS and open fds and the pins, links and
maps of its programs, read from bpffs and bpftool. With as many pods at the end as at the start:

- pins, links and maps: exactly as many at the end as at the start;
- agent RSS: at most RSS_GROWTH_KIB (32 MiB) more; open fds: at most FD_GROWTH (16) more.

A breach exits non-zero (the CI test runs it for BPFLEET_SOAK_CI_MINUTES, 2 by default).
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import yaml

from e2e import bpf_census
from e2e.harness import ManagedProcess, log, wait_for
from e2e.kube import Kube
from e2e.podsim import PodSimulator, SimPod
from e2e.tools import REPO_ROOT

NAMESPACE = "soak"
PODS_PER_NODE = 3
RSS_GROWTH_KIB = 32 * 1024
FD_GROWTH = 16
COUNTER = "soak-counter"
UPDATED = "soak-updated"
UPDATED_SOURCE = """
BPF_ARRAY(soak_gen, u64, 1);
int soak_count(struct __sk_buff *skb) {
    int key = 0;
    u64 *value = soak_gen.lookup(&key);
    if (value) *value = GEN;
    return 1;
}
"""


class SoakNode(Protocol):
    name: str
    sim: PodSimulator
    agent: ManagedProcess
    pods: list[SimPod]
    bpffs_root: Path

    def create_pod(self, namespace: str, name: str, labels: dict[str, str]) -> SimPod: ...

    def delete_pod(self, pod: SimPod) -> None: ...


@dataclass(frozen=True)
class Figures:
    node: str
    rss_kib: int
    fds: int
    pins: int
    links: int
    maps: int

    def line(self, when: str) -> str:
        return (
            f"{when:5} {self.node:8} rss {self.rss_kib / 1024:6.1f} MiB  fds {self.fds:4}  "
            f"pins {self.pins:3}  links {self.links:3}  maps {self.maps:3}"
        )


def figures(node: SoakNode, namespace: str) -> Figures:
    assert node.agent.process is not None
    process = bpf_census.process_figures(node.agent.process.pid)
    root = node.bpffs_root / namespace
    progs = {i for i in (bpf_census.pinned_id("prog", p) for p in root.glob("*/*/prog")) if i is not None}
    map_ids = {m for p in bpf_census.programs() if p["id"] in progs for m in p.get("map_ids", [])}
    return Figures(
        node.name,
        process.rss_kib,
        process.fds,
        len(bpf_census.pins(root)),
        len(bpf_census.links(progs)),
        len(map_ids),
    )


def breaches(start: Figures, end: Figures) -> list[str]:
    found = []
    for what in ("pins", "links", "maps"):
        if getattr(end, what) != getattr(start, what):
            found.append(f"{end.node}: {what} {getattr(start, what)} -> {getattr(end, what)}")
    if end.rss_kib > start.rss_kib + RSS_GROWTH_KIB:
        found.append(f"{end.node}: RSS grew {(end.rss_kib - start.rss_kib) / 1024:.1f} MiB")
    if end.fds > start.fds + FD_GROWTH:
        found.append(f"{end.node}: fds {start.fds} -> {end.fds}")
    return found


def _programs() -> list[dict[str, Any]]:
    counter = yaml.safe_load((REPO_ROOT / "examples" / "pod-traffic-counter.yaml").read_text())
    counter["metadata"] = {"name": COUNTER}
    counter["spec"]["podSelector"] = {"matchLabels": {"app": "soak"}}
    return [counter, updated(0)]


def updated(generation: int) -> dict[str, Any]:
    return {
        "apiVersion": "bpfleet.io/v1alpha1",
        "kind": "EbpfProgram",
        "metadata": {"name": UPDATED},
        "spec": {
            "source": {"inline": UPDATED_SOURCE},
            "function": "soak_count",
            "attach": {"type": "CgroupSkb", "direction": "Egress"},
            "podSelector": {"matchLabels": {"app": "soak"}},
            "parameters": {"GEN": generation},
        },
    }


class Soak:
    def __init__(self, kube: Kube, nodes: list[SoakNode], namespace: str = NAMESPACE) -> None:
        self.kube, self.nodes, self.namespace = kube, nodes, namespace
        self.made = 0
        self.generation = 0

    def converged(self, timeout: float = 60) -> None:
        want = f"{PODS_PER_NODE * len(self.nodes)}/{PODS_PER_NODE * len(self.nodes)}"

        def pods(name: str) -> str:
            status = (self.kube.program(self.namespace, name) or {}).get("status") or {}
            return str((status.get("summary") or {}).get("pods"))

        def done() -> bool:
            names = (COUNTER, UPDATED)
            return all(self.kube.is_ready(self.namespace, n) and pods(n) == want for n in names)

        wait_for(f"both programs Ready on {want} pods", done, timeout=timeout, interval=0.2)

    def updated_to(self, generation: int, timeout: float = 60) -> None:
        """Waits until every node runs the updated program's version of `generation`: one version
        directory each (the previous one unloaded)."""

        def done() -> bool:
            dirs = [list((n.bpffs_root / self.namespace / UPDATED).glob("*")) for n in self.nodes]
            program = self.kube.program(self.namespace, UPDATED) or {}
            current = (program.get("status") or {}).get("observedGeneration") == program.get(
                "metadata", {}
            ).get("generation")
            return current and self.kube.is_ready(self.namespace, UPDATED) and all(len(d) == 1 for d in dirs)

        wait_for(f"the update to generation {generation} everywhere", done, timeout=timeout, interval=0.2)

    def churn_once(self, node: SoakNode) -> None:
        """One pod created and the oldest one deleted, on `node`."""
        self.made += 1
        node.create_pod(self.namespace, f"soak-{self.made}", {"app": "soak"})
        mine = [p for p in node.pods if p.namespace == self.namespace]
        if len(mine) > PODS_PER_NODE:
            node.delete_pod(mine[0])

    def run(self, minutes: float, pods_per_minute: float, update_seconds: float) -> list[str]:
        """Sets up, churns for `minutes`, prints the figures; returns the breaches."""
        self.kube.kubectl("create", "namespace", self.namespace, check=False)
        for node in self.nodes:
            for _ in range(PODS_PER_NODE):
                self.churn_once(node)
        for program in _programs():
            self.kube.apply(self.namespace, program)
        self.converged()
        for node in self.nodes:  # one round of churn, so that start figures are warm
            self.churn_once(node)
        # And one update: a version made by an update pins a record of the maps it carried on
        # (kept/), which the first version has not; from then on every version has one.
        self.generation += 1
        self.kube.apply(self.namespace, updated(self.generation))
        self.converged()
        self.updated_to(self.generation)
        start = [figures(n, self.namespace) for n in self.nodes]
        for f in start:
            print(f.line("start"), flush=True)

        begun = time.monotonic()
        next_update = begun + update_seconds
        period = 60.0 / pods_per_minute
        turn = 0
        while time.monotonic() - begun < minutes * 60:
            self.churn_once(self.nodes[turn % len(self.nodes)])
            turn += 1
            if time.monotonic() >= next_update:
                self.generation += 1
                self.kube.apply(self.namespace, updated(self.generation))
                next_update += update_seconds
            time.sleep(max(0.0, begun + turn * period - time.monotonic()))
        self.converged(timeout=120)
        self.updated_to(self.generation, timeout=120)
        end = [figures(n, self.namespace) for n in self.nodes]
        for f in end:
            print(f.line("end"), flush=True)
        print(
            f"{minutes:g} min: {self.made} pods created, {self.generation} program updates, "
            f"bounds: pins/links/maps equal, RSS +{RSS_GROWTH_KIB // 1024} MiB, fds +{FD_GROWTH}",
            flush=True,
        )
        return [b for s, e in zip(start, end, strict=True) for b in breaches(s, e)]


def main(argv: list[str] | None = None) -> None:
    from e2e.fleet import local_fleet

    parser = argparse.ArgumentParser(prog="python -m e2e.soak", description=__doc__)
    parser.add_argument("--minutes", type=float, default=60.0)
    parser.add_argument("--pods-per-minute", type=float, default=30.0)
    parser.add_argument("--update-seconds", type=float, default=60.0)
    args = parser.parse_args(argv)
    with local_fleet(nodes=2) as fleet:
        log("soaking", minutes=args.minutes, pods_per_minute=args.pods_per_minute)
        found = Soak(fleet.kube, fleet.nodes).run(args.minutes, args.pods_per_minute, args.update_seconds)
    for breach in found:
        print(f"BREACH {breach}", flush=True)
    sys.exit(1 if found else 0)


if __name__ == "__main__":
    main()
