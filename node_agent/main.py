"""`bpfleet-agent`: the node agent's entry point."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from importlib import resources
from pathlib import Path
from types import FrameType

from bpfleet_api import logs, names
from bpfleet_api.kube_client import api_client
from node_agent import features
from node_agent.agent import Agent
from node_agent.cgroups import PodCgroupResolver, cgroup_v2_mount
from node_agent.compile_queue import CompileQueue
from node_agent.kernel.bpffs import DEFAULT_ROOT, BpffsBackend
from node_agent.kernel.compile_cgroup import CompileLimits
from node_agent.metrics import DEFAULT_ADDRESS, AgentMetrics, serve
from node_agent.model import DEFAULT_MAX_MAP_BYTES, Trust
from node_agent.reconcile import Reconciler

log = logging.getLogger("node_agent")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="bpfleet-agent", description=__doc__)
    parser.add_argument(
        "--node", default=os.environ.get("NODE_NAME"), help="this node's name (env NODE_NAME)"
    )
    parser.add_argument("--kubeconfig", default=os.environ.get("KUBECONFIG"))
    parser.add_argument(
        "--kubelet-cgroup-root",
        type=Path,
        default=os.environ.get("BPFLEET_KUBELET_CGROUP_ROOT") or None,  # empty means autodetect
        help="where kubelet's kubepods tree lives (default: the cgroup v2 mount)",
    )
    parser.add_argument(
        "--bpffs-root", type=Path, default=Path(os.environ.get("BPFLEET_BPFFS_ROOT", str(DEFAULT_ROOT)))
    )
    parser.add_argument(
        "--proc-root",
        type=Path,
        default=Path(os.environ.get("BPFLEET_PROC_ROOT") or "/proc"),
        help="the host's /proc, where pods' processes and namespaces are found (env BPFLEET_PROC_ROOT)",
    )
    parser.add_argument("--resync", type=float, default=30.0, help="seconds between full passes")
    parser.add_argument(
        "--max-map-bytes",
        type=int,
        default=int(os.environ.get("BPFLEET_MAX_MAP_BYTES") or DEFAULT_MAX_MAP_BYTES),
        help="the cap on a program's map memory where its version names none "
        "(env BPFLEET_MAX_MAP_BYTES, default 64 MiB)",
    )
    parser.add_argument(
        "--compile-cpu-seconds",
        type=int,
        default=int(os.environ.get("BPFLEET_COMPILE_CPU_SECONDS") or CompileLimits.cpu_seconds),
        help="CPU time one compile may use (env BPFLEET_COMPILE_CPU_SECONDS)",
    )
    parser.add_argument(
        "--compile-memory-bytes",
        type=int,
        default=int(os.environ.get("BPFLEET_COMPILE_MEMORY_BYTES") or CompileLimits.memory_bytes),
        help="memory one compile may use (env BPFLEET_COMPILE_MEMORY_BYTES)",
    )
    parser.add_argument(
        "--builds-per-namespace",
        type=int,
        default=int(os.environ.get("BPFLEET_BUILDS_PER_NAMESPACE") or 1),
        help="compiles of one namespace per pass, so that none starves another "
        "(env BPFLEET_BUILDS_PER_NAMESPACE)",
    )
    parser.add_argument(
        "--builds-per-pass",
        type=int,
        default=int(os.environ.get("BPFLEET_BUILDS_PER_PASS") or 4),
        help="compiles per pass in all; 0 for no bound (env BPFLEET_BUILDS_PER_PASS)",
    )
    parser.add_argument(
        "--metrics-address",
        default=os.environ.get("BPFLEET_METRICS_ADDRESS", DEFAULT_ADDRESS),
        help="host:port of /metrics and /healthz (no authentication; default loopback only); empty "
        "disables (env BPFLEET_METRICS_ADDRESS)",
    )
    parser.add_argument("--log-level", default=os.environ.get("BPFLEET_LOG_LEVEL", "INFO"))
    args = parser.parse_args(argv)
    if not args.node:
        parser.error("the node name is required: --node or NODE_NAME")
    if args.max_map_bytes <= 0 or args.builds_per_namespace < 1 or args.builds_per_pass < 0:
        parser.error(
            "--max-map-bytes and --builds-per-namespace must be positive, --builds-per-pass 0 or more"
        )
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    logs.setup(args.log_level)
    include_dir = Path(str(resources.files("bpfleet_bpf") / "include"))
    node_features = features.probe()
    if node_features.no_headers:
        log.error(node_features.no_headers, extra={"node": args.node})
    backend = BpffsBackend(
        root=args.bpffs_root,
        include_dirs=(include_dir,),
        tracefs=node_features.tracefs or Path("/sys/kernel/tracing"),
        node_wide_prelude=(include_dir / "node_wide_prelude.h").read_text(),
        proc=args.proc_root,
        compile_limits=CompileLimits(
            cpu_seconds=args.compile_cpu_seconds, memory_bytes=args.compile_memory_bytes
        ),
    )
    resolver = PodCgroupResolver(args.kubelet_cgroup_root or cgroup_v2_mount())
    metrics = AgentMetrics(resolver)
    queue = CompileQueue(per_namespace=args.builds_per_namespace, per_pass=args.builds_per_pass)
    reconciler = Reconciler(metrics.timed(backend), resolver, node_features, queue)
    agent = Agent(
        api_client(args.kubeconfig),
        args.node,
        reconciler,
        node_features,
        resync=args.resync,
        metrics=metrics,
        trust=Trust(system_namespace=names.system_namespace(), max_map_bytes=args.max_map_bytes),
    )
    serve(args.metrics_address, agent)

    def _stop(signum: int, _frame: FrameType | None) -> None:
        # Programs stay attached: stopping the agent never stops the data plane.
        log.info("stopping; attached programs keep running", extra={"signal": signum})
        agent.stop()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    agent.run()
    sys.exit(0)


if __name__ == "__main__":
    main()
