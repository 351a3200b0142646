"""Latency benchmark of the full path on this host; prints figures, asserts nothing.

  python -m e2e.bench [--programs 5] [--pods 20] [--loads 10] [--compile-only]
                      [--fast-programs 1 50] [--fast-pods 100] [--load-programs 50] [--load-pods 200]
                      [--bytecode-programs 20] [--bytecode-only]

apply -> Ready        from `kubectl apply` of a new EbpfProgram to READY True (includes the compile)
pod -> attached       from the Pod's creation to its cgroup showing the program (bpftool)
cgroup -> attached    from kubelet making a Pending pod's cgroup to every program's link, with 1
                      and with 50 programs (--fast-programs), p50 and p99 (e2e/bench_fast_path.py)
load                  --load-programs programs applied at once on --load-pods pods -> all Ready, the
                      agent's RSS then, and its CPU when idle (e2e/bench_load.py)
apply -> Ready, by    --bytecode-programs new programs of each kind, created through the API, to
source kind           Ready=True seen by a watch: bytecode from a ConfigMap, from an image on a
                      loopback registry, and the same counter as inline C (BCC); p50/p90/max
                      (e2e/bench_bytecode.py; --bytecode-only measures just this, on the same node)
compile               median wall time of a load (compile worker, verifier, pins) of the
                      pod-traffic-counter builtin, sandboxed and not, and the sandbox's overhead;
                      --compile-only measures just this, without the control plane
"""

from __future__ import annotations

import argparse
import secrets
import shutil
import statistics
import tempfile
import time
import uuid
from pathlib import Path

import yaml

from e2e import bench_bytecode, bench_fast_path, bench_load
from e2e.controlplane import ControlPlane
from e2e.harness import agent_process, hook_socket, install_crds, log, operator_process, wait_for
from e2e.kube import Kube, cgroup_programs
from e2e.podsim import PodSimulator, cleanup_cgroup_tree, find_cgroup2_mount
from e2e.registry import LocalRegistry
from e2e.tools import REPO_ROOT
from node_agent.kernel.attach_types import kernel_attach
from node_agent.kernel.backend import ProgramBuild, ProgramRef
from node_agent.kernel.bpffs import BpffsBackend

EXAMPLE = yaml.safe_load((REPO_ROOT / "examples" / "pod-traffic-counter.yaml").read_text())
NODE = "bench-node"


def summary(name: str, samples: list[float]) -> str:
    ms = sorted(s * 1000 for s in samples)
    p90 = ms[min(len(ms) - 1, round(0.9 * (len(ms) - 1)))]
    return (
        f"{name:20} n={len(ms):3}  min {ms[0]:7.1f} ms  median {statistics.median(ms):7.1f} ms  "
        f"p90 {p90:7.1f} ms  max {ms[-1]:7.1f} ms"
    )


def percentiles(name: str, samples: list[float]) -> str:
    ms = sorted(s * 1000 for s in samples)
    p99 = ms[min(len(ms) - 1, round(0.99 * (len(ms) - 1)))]
    median = statistics.median(ms)
    return f"{name:28} n={len(ms):3}  p50 {median:7.2f} ms  p99 {p99:7.2f} ms  max {ms[-1]:7.2f} ms"


def measure_apply_to_ready(kube: Kube, namespace: str, count: int) -> list[float]:
    samples = []
    for i in range(count):
        manifest = {**EXAMPLE, "metadata": {"name": f"bench-{i}"}}
        start = time.monotonic()
        kube.apply(namespace, manifest)
        wait_for("Ready", lambda n=f"bench-{i}": kube.is_ready(namespace, n), timeout=60, interval=0.01)
        samples.append(time.monotonic() - start)
    return samples


def measure_pod_to_attached(sim: PodSimulator, namespace: str, count: int) -> list[float]:
    samples = []
    for i in range(count):
        start = time.monotonic()
        pod = sim.create_pod(namespace, f"web-{i}", {"app": "web"})
        wait_for("attached", lambda p=pod: cgroup_programs(p.pod_cgroup), timeout=30, interval=0.005)
        samples.append(time.monotonic() - start)
    return samples


def measure_compile(loads: int, *, sandbox: bool) -> list[float]:
    """Wall time of `loads` loads of one builtin, each a new version (so each one compiles)."""
    bpffs_root = Path(f"/sys/fs/bpf/bpfleet-bench-compile-{secrets.token_hex(4)}")
    bpffs_root.mkdir()
    include = REPO_ROOT / "bpf" / "include"
    backend = BpffsBackend(bpffs_root, include_dirs=(include,), sandbox=sandbox)
    source = (REPO_ROOT / "bpf" / "programs" / "pod-traffic-counter.c").read_text()
    build = ProgramBuild(source, "count_packets", kernel_attach({"type": "CgroupSkb", "direction": "Egress"}))
    samples = []
    try:
        for i in range(loads):
            ref = ProgramRef("bench", "counter", f"v{i}")
            start = time.monotonic()
            backend.load(ref, build)
            samples.append(time.monotonic() - start)
            backend.unload(ref)
    finally:
        shutil.rmtree(bpffs_root, ignore_errors=True)
    return samples


def compile_cost(loads: int) -> str:
    measure_compile(1, sandbox=True)  # a first load warms the page cache for both
    # Interleaved, so that a noisy neighbour on the machine weighs on both figures alike.
    sandboxed: list[float] = []
    plain: list[float] = []
    for _ in range(loads):
        sandboxed += measure_compile(1, sandbox=True)
        plain += measure_compile(1, sandbox=False)
    with_sandbox, without = statistics.median(sandboxed), statistics.median(plain)
    overhead = (with_sandbox - without) / without * 100
    return "\n".join(
        [
            summary("compile, sandboxed", sandboxed),
            summary("compile, unsandboxed", plain),
            f"{'sandbox overhead':20} {overhead:+.1f} % of the median "
            f"({with_sandbox * 1000:.1f} ms vs {without * 1000:.1f} ms)",
        ]
    )


def measure_by_kind(
    kube: Kube, sim: PodSimulator, registry: LocalRegistry, work: Path, count: int
) -> dict[str, list[float]]:
    """In a namespace of its own, with one pod the programs attach to; its programs removed after."""
    namespace = "bench-bytecode"
    kube.kubectl("create", "namespace", namespace)
    sim.create_pod(namespace, "web-0", {"app": "web"})
    with bench_bytecode.published(kube, namespace, registry, work):
        figures = bench_bytecode.measure(kube, namespace, registry, count)
    kube.kubectl("delete", "ebpf", "--all", "-n", namespace, "--wait=true", "--timeout=120s")
    return figures


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m e2e.bench", description=__doc__)
    parser.add_argument("--programs", type=int, default=5)
    parser.add_argument("--pods", type=int, default=20)
    parser.add_argument("--loads", type=int, default=10, help="loads per compile figure")
    parser.add_argument("--compile-only", action="store_true", help="only the compile figures")
    parser.add_argument("--fast-programs", type=int, nargs="+", default=[1, 50], help="program counts")
    parser.add_argument("--fast-pods", type=int, default=100, help="pods per cgroup -> attached figure")
    parser.add_argument("--load-programs", type=int, default=50, help="programs of the load figure")
    parser.add_argument("--load-pods", type=int, default=200, help="pods of the load figure")
    parser.add_argument("--bytecode-programs", type=int, default=20, help="samples per source kind")
    parser.add_argument("--bytecode-only", action="store_true", help="only apply -> Ready by source kind")
    parser.add_argument("--fast-only", action="store_true", help="only cgroup -> attached")
    parser.add_argument("--keep-logs", type=Path, help="copy the operator's and agent's logs here")
    args = parser.parse_args(argv)
    compiles = ""
    if not (args.bytecode_only or args.fast_only):
        log("measuring compile, sandboxed and not", loads=args.loads)
        compiles = compile_cost(args.loads)
    if args.compile_only:
        print()
        print(compiles)
        return

    work = Path(tempfile.mkdtemp(prefix="bpfleet-bench-"))
    run = uuid.uuid4().hex[:6]
    cgroup_root = find_cgroup2_mount() / f"bpfleet-bench-{run}" / NODE
    bpffs_root = Path(f"/sys/fs/bpf/bpfleet-bench-{run}")
    plane = ControlPlane(state_dir=work / "controlplane")
    plane.start()
    operator = agent = None
    sim = None
    registry = LocalRegistry()
    try:
        registry.start()
        kube = Kube(plane.kubeconfig)
        kube.bpffs_roots[NODE] = bpffs_root  # status entries then say where versions are pinned
        install_crds(plane.kubeconfig)
        operator = operator_process(plane.kubeconfig, work / "logs").start()
        # The simulator first: kubelet's cgroup root exists before the agent starts, as on a node.
        sim = PodSimulator(kube.api, NODE, cgroup_root)
        sim.ensure_node()
        agent = agent_process(plane.kubeconfig, NODE, cgroup_root, bpffs_root, work / "logs")
        agent.env.update(bench_bytecode.agent_env(registry, work / "bytecode-cache"))
        agent.start()
        # Only a node whose agent has published its BpfleetNode is targeted.
        wait_for("the agent to start", lambda: kube.runs_agent(NODE), timeout=60)
        # And the operator to write its node state: a first sample would measure its start-up.
        wait_for(
            "the operator to write the node's state",
            lambda: any(s["metadata"]["name"] == NODE for s in kube.node_states()),
            timeout=60,
        )
        namespace = "bench"
        kube.kubectl("create", "namespace", namespace)
        sim.create_pod(namespace, "web-seed", {"app": "web"})
        if args.fast_only:
            log("measuring cgroup -> attached", programs=args.fast_programs, pods=args.fast_pods)
            fast = bench_fast_path.measure(
                kube, sim, NODE, hook_socket(work / "logs", NODE), args.fast_programs, args.fast_pods
            )
            print()
            for count, samples in sorted(fast.items()):
                print(percentiles(f"cgroup -> attached, {count} prog", samples))
            return
        log("measuring apply -> Ready by source kind", programs=args.bytecode_programs)
        by_kind = measure_by_kind(kube, sim, registry, work, args.bytecode_programs)
        if args.bytecode_only:
            print()
            print("\n".join(bench_bytecode.lines(by_kind)))
            return

        log("measuring apply -> Ready", programs=args.programs)
        ready = measure_apply_to_ready(kube, namespace, args.programs)
        log("measuring pod -> attached", pods=args.pods, programs_attaching=args.programs)
        attached = measure_pod_to_attached(sim, namespace, args.pods)
        log("measuring cgroup -> attached", programs=args.fast_programs, pods=args.fast_pods)
        fast = bench_fast_path.measure(
            kube, sim, NODE, hook_socket(work / "logs", NODE), args.fast_programs, args.fast_pods
        )
        log("measuring the agent under load", programs=args.load_programs, pods=args.load_pods)
        assert agent.process is not None
        load = bench_load.measure(kube, sim, agent.process.pid, args.load_programs, args.load_pods)
        print()
        print(summary("apply -> Ready", ready))
        print("\n".join(bench_bytecode.lines(by_kind)))
        print(summary("pod -> attached", attached))
        for count, samples in sorted(fast.items()):
            print(percentiles(f"cgroup -> attached, {count} prog", samples))
        print("\n".join(load.lines()))
        print(compiles)
        kube.kubectl("delete", "ebpf", "--all", "-n", namespace, "--wait=true", "--timeout=60s")
    finally:
        if sim is not None:
            sim.cleanup()
        for process in (agent, operator):
            if process is not None:
                process.stop()
        registry.stop()
        plane.stop()
        if args.keep_logs is not None:
            shutil.copytree(work / "logs", args.keep_logs, dirs_exist_ok=True)
            shutil.copytree(work / "controlplane" / "logs", args.keep_logs, dirs_exist_ok=True)
        cleanup_cgroup_tree(cgroup_root.parent)
        shutil.rmtree(bpffs_root, ignore_errors=True)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
