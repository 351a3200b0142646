"""Fleet benchmark: the real API server and the real operator, with simulated agents
(e2e/fleet_agents.py) that report through the agent's own status code. Prints figures, asserts
nothing.

  python -m e2e.fleet_bench [--nodes 50] [--programs 5] [--source-bytes 65536]

apply -> all Ready      every program created at once until each is Ready on every node
API writes per node     writes the API server counted (its /metrics apiserver_request_total), by
                        resource, divided by the nodes: for the apply, and for a rollout of one
                        program (one parameter changed)
operator CPU and RSS    from /proc: CPU seconds per phase, resident and peak memory
etcd per node-program   the value bytes etcd holds under ebpfnodestates, ebpfprogramversions and
                        ebpfprogramplacements, divided by nodes x programs
delete all -> gone      every program deleted until none is left and no node lists any
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import kubernetes

from bpfleet_api import names
from bpfleet_api.informer import Informer
from e2e.controlplane import ControlPlane
from e2e.fleet_agents import FLEET_LABEL, SimulatedFleet
from e2e.fleet_measure import (
    READ_VERBS,
    WRITE_VERBS,
    Writes,
    api_requests,
    etcd_value_bytes,
    process_usage,
    requests_between,
)
from e2e.harness import install_crds, log, operator_process
from e2e.kube import Kube

NAMESPACE = "fleet-bench"
NODE_RESOURCES = {names.NODE_STATE_PROGRAMS_PLURAL, names.VERSION_PLURAL, names.PLACEMENT_PLURAL}
ALL_RESOURCES = NODE_RESOURCES | {
    names.PROGRAM_PLURAL,
    names.NODE_STATE_PLURAL,
    "nodes",
    "events",
    "leases",
}


def source_of(index: int, size: int) -> str:
    """A valid program padded with a comment to `size` bytes: the inline limit is 64 KiB."""
    body = f"// fleet benchmark program {index}\nint count(struct __sk_buff *skb) {{ return 1; }}\n"
    padding = max(0, size - len(body) - 5)  # "/*" and "*/\n"
    return body + "/*" + "x" * padding + "*/\n"


def program(index: int, size: int) -> dict[str, Any]:
    return {
        "apiVersion": names.API_VERSION,
        "kind": names.PROGRAM_KIND,
        "metadata": {"name": f"fleet-{index:03d}", "namespace": NAMESPACE},
        "spec": {
            "source": {"inline": source_of(index, size)},
            "function": "count",
            "attach": {"type": "CgroupSkb", "direction": "Egress"},
            "podSelector": {},
            "nodeSelector": {"matchLabels": {FLEET_LABEL: "true"}},
        },
    }


class Bench:
    def __init__(self, kube: Kube, fleet: SimulatedFleet, processes: dict[str, int], programs: int) -> None:
        """`processes`: the pids whose CPU each phase reports, by name, the operator's first."""
        self.kube, self.fleet, self.processes, self.programs = kube, fleet, processes, programs
        self.custom = kube.custom
        # The programs as a watch has them: LISTing 50 programs of 64 KiB every 0.25 s took a
        # good part of the API server's CPU this bench measures.
        path = f"/apis/{names.GROUP}/{names.VERSION}/namespaces/{NAMESPACE}/{names.PROGRAM_PLURAL}"
        self._programs = Informer(kube.rest, path, reduce=_progress).start()
        self._programs.synced.wait(30)

    def cpu_seconds(self) -> dict[str, float]:
        return {name: process_usage(pid).cpu_seconds for name, pid in self.processes.items()}

    def wait(self, what: str, done: Callable[[], tuple[bool, str]], timeout: float) -> float:
        """Seconds until done() says so, printing its progress every 2 s."""
        start = last = time.monotonic()
        while True:
            finished, progress = done()
            now = time.monotonic()
            if finished:
                log(f"{what}: done", seconds=f"{now - start:.1f}", progress=progress)
                return now - start
            if now - start > timeout:
                raise TimeoutError(f"{what}: not done after {timeout:.0f} s ({progress})")
            if now - last >= 2:
                log(f"{what}: waiting", seconds=f"{now - start:.0f}", progress=progress)
                last = now
            time.sleep(0.25)

    def phase(
        self, label: str, act: Callable[[], None], done: Callable[[], tuple[bool, str]], args: Any
    ) -> list[str]:
        """Runs `act`, waits for `done`, and reports the time, the API writes per node and the
        CPU of that phase by process (the 2 cores are shared: who used them says what to make
        cheaper)."""
        before, cpu = api_requests(self.kube.api), self.cpu_seconds()
        start = time.monotonic()
        act()
        self.wait(label, done, timeout=args.timeout)
        took = time.monotonic() - start
        after, cpu_after = api_requests(self.kube.api), self.cpu_seconds()
        used = ", ".join(f"{name} {cpu_after[name] - cpu[name]:.1f}" for name in cpu)
        phase = label.split(" ")[0]
        return [
            f"{label:25} {took:8.1f} s",
            f"  API writes of {phase}:",
            per_node(requests_between(before, after, ALL_RESOURCES, WRITE_VERBS), args.nodes),
            f"  API reads of {phase} (watches opened, not events):",
            per_node(requests_between(before, after, ALL_RESOURCES, READ_VERBS), args.nodes, total=False),
            f"  CPU s: {used}",
        ]

    def listed(self) -> list[dict[str, Any]]:
        return self._programs.objects()

    def stop(self) -> None:
        self._programs.stop()

    def all_ready(self, generations: dict[str, int] | None = None) -> tuple[bool, str]:
        nodes = len(self.fleet.nodes)
        ready = on_nodes = 0
        for obj in self.listed():
            status = obj.get("status") or {}
            name, generation = obj["metadata"]["name"], obj["metadata"]["generation"]
            if generations and generations.get(name, generation) > generation:
                continue
            counts = status.get("nodes") or {}
            on_nodes += int(counts.get("ready") or 0)
            current = status.get("observedGeneration") == generation
            cond = next((c for c in status.get("conditions", []) if c["type"] == "Ready"), {})
            ready += current and cond.get("status") == "True" and counts.get("ready") == nodes
        return ready == self.programs, f"{ready}/{self.programs} programs Ready, {on_nodes} on nodes"

    def all_gone(self) -> tuple[bool, str]:
        left = len(self.listed())
        listing = 0
        for state in self.fleet.states():
            listing += bool((state.get("spec") or {}).get("programs"))
            listing += bool((state.get("status") or {}).get("programs"))
        return left == 0 and listing == 0, f"{left} programs left, {listing} node lists not empty"


def _progress(program: dict[str, Any]) -> dict[str, Any]:
    """What the bench reads of a program: its name, generation and status."""
    meta = program["metadata"]
    return {
        "metadata": {"name": meta["name"], "generation": meta["generation"]},
        "status": program.get("status"),
    }


def object_parts(rest: Any, node: str) -> str:
    """The bytes of one EbpfNodeState's parts, as the API server has it: what etcd's figure is made of."""
    path = f"/apis/{names.GROUP}/{names.VERSION}/{names.NODE_STATE_PROGRAMS_PLURAL}/{node}"
    state = rest.get(path)
    meta = dict(state["metadata"])
    parts = {
        "managedFields": meta.pop("managedFields", None),
        "rest of metadata": meta,
        "spec": state.get("spec"),
        "status": state.get("status"),
    }
    sizes = ", ".join(f"{name} {_json_bytes(part)}" for name, part in parts.items())
    return f"{_json_bytes(state)} B ({sizes})"


def _json_bytes(value: Any) -> int:
    return len(json.dumps(value, separators=(",", ":")))


def per_node(writes: Writes, nodes: int, total: bool = True) -> str:
    lines = []
    for (resource, sub, verb), count in sorted(writes.items()):
        what = f"{resource}/{sub}" if sub else resource
        lines.append(f"    {what:34} {verb:7} {count:8}  {count / nodes:8.2f} per node")
    if not total:
        return "\n".join(lines) or "    none"
    node_writes = sum(c for k, c in writes.items() if k[0] in NODE_RESOURCES)
    what = "node API (states, versions, placements)"
    lines.append(f"    {what:34} {'all':7} {node_writes:8}  {node_writes / nodes:8.2f} per node")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> None:
    work = Path(tempfile.mkdtemp(prefix="bpfleet-fleet-bench-"))
    plane = ControlPlane(state_dir=work / "controlplane")
    plane.start()
    fleet: SimulatedFleet | None = None
    operator = None
    bench: Bench | None = None
    try:
        install_crds(plane.kubeconfig)
        config = kubernetes.client.Configuration()
        kubernetes.config.load_kube_config(config_file=str(plane.kubeconfig), client_configuration=config)
        config.connection_pool_maxsize = args.workers * 2
        kube = Kube(plane.kubeconfig)
        kube.api = kubernetes.client.ApiClient(config)
        kube.custom = kubernetes.client.CustomObjectsApi(kube.api)
        nodes = [f"fleet-{i:05d}" for i in range(args.nodes)]
        fleet = SimulatedFleet(kube.api, nodes, args.pods, args.workers, args.agent_reads, rest=kube.rest)
        log("registering nodes and their agents", nodes=args.nodes)
        fleet.register(lambda done: log("registered", nodes=done))
        operator = operator_process(plane.kubeconfig, work / "logs")
        # The simulated agents beat once: the operator must not call them silent meanwhile.
        operator.env.update({"BPFLEET_AGENT_SILENCE_SECONDS": "3600", "BPFLEET_DELETE_GRACE_SECONDS": "120"})
        operator.start()
        fleet.start()
        kube.kubectl("create", "namespace", NAMESPACE)
        plane_pids = plane.pids()
        processes = {"operator": operator.process.pid, "simulated agents": os.getpid()}
        control_plane = ("kube-apiserver", "etcd", "kube-controller-manager")
        processes |= {name: plane_pids[name] for name in control_plane}
        bench = Bench(kube, fleet, processes, args.programs)
        bench.wait(
            "the operator making every node's EbpfNodeState",
            lambda: (len(fleet.states()) >= args.nodes, f"{len(fleet.states())}/{args.nodes}"),
            timeout=args.timeout,
        )
        report = [f"fleet: {args.nodes} nodes x {args.programs} programs, {args.source_bytes} B sources"]

        def create_all() -> None:
            log("applying every program at once", programs=args.programs)
            for i in range(args.programs):
                kube.custom.create_namespaced_custom_object(
                    names.GROUP, names.VERSION, NAMESPACE, names.PROGRAM_PLURAL, program(i, args.source_bytes)
                )

        report += bench.phase("apply -> all Ready", create_all, bench.all_ready, args)

        etcd = f"http://127.0.0.1:{plane._run_info().ports.etcd_client}"
        state_keys, state_bytes = etcd_value_bytes(
            etcd, f"/registry/{names.GROUP}/{names.NODE_STATE_PROGRAMS_PLURAL}/"
        )
        version_keys, version_bytes = etcd_value_bytes(
            etcd, f"/registry/{names.GROUP}/{names.VERSION_PLURAL}/"
        )
        placement_keys, placement_bytes = etcd_value_bytes(
            etcd, f"/registry/{names.GROUP}/{names.PLACEMENT_PLURAL}/"
        )
        pairs = args.nodes * args.programs
        total = state_bytes + version_bytes + placement_bytes
        report += [
            f"etcd per node-program     {total / pairs:8.0f} B"
            f"  ({state_keys} node states {state_bytes} B, {version_keys} versions {version_bytes} B,"
            f" {placement_keys} placements {placement_bytes} B)",
            f"  one node state's JSON: {object_parts(kube.rest, fleet.nodes[0])}",
        ]

        first = bench.listed()[0]
        generations: dict[str, int] = {}

        def roll_one() -> None:
            log("rolling out a new version of one program")
            patch = {"spec": {"parameters": {"ROLLOUT": 1}}}
            changed = kube.custom.patch_namespaced_custom_object(
                names.GROUP, names.VERSION, NAMESPACE, names.PROGRAM_PLURAL, first["metadata"]["name"], patch
            )
            generations[changed["metadata"]["name"]] = changed["metadata"]["generation"]

        report += bench.phase("rollout of one program", roll_one, lambda: bench.all_ready(generations), args)

        def delete_all() -> None:
            log("deleting every program")
            kube.kubectl("delete", "ebpf", "--all", "-n", NAMESPACE, "--wait=false")

        report += bench.phase("delete all -> gone", delete_all, bench.all_gone, args)
        usage = process_usage(operator.process.pid)
        report += [
            f"operator CPU, whole run   {usage.cpu_seconds:8.1f} s",
            f"operator RSS              {usage.rss_bytes / 2**20:8.1f} MiB"
            f" (peak {usage.peak_rss_bytes / 2**20:.1f} MiB)",
            f"simulated agents          {fleet.status_writes} status writes"
            + (", each read its versions" if args.agent_reads else ", versions read once per process"),
        ]
        print()
        print("\n".join(report))
    finally:
        if bench is not None:
            bench.stop()
        if fleet is not None:
            fleet.stop()
        if operator is not None:
            operator.stop()
        plane.stop()
        shutil.rmtree(work, ignore_errors=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m e2e.fleet_bench", description=__doc__)
    parser.add_argument("--nodes", type=int, default=50)
    parser.add_argument("--programs", type=int, default=5)
    parser.add_argument(
        "--source-bytes", type=int, default=64 * 1024, help="inline source size (64 KiB at most)"
    )
    parser.add_argument("--pods", type=int, default=10, help="pods attached per program and node")
    parser.add_argument("--workers", type=int, default=8, help="threads of the simulated agents")
    parser.add_argument("--timeout", type=float, default=600, help="seconds per phase at most")
    parser.add_argument(
        "--agent-reads",
        action="store_true",
        help="every simulated agent reads its versions (as real ones do)",
    )
    run(parser.parse_args(argv))


if __name__ == "__main__":
    main()
