"""`bpfleet-agent`: the node agent's entry point."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import time
from importlib import resources
from pathlib import Path
from types import FrameType

from bpfleet_api import logs, names
from bpfleet_api.rest import RestClient
from node_agent import features, observed
from node_agent.agent import Agent
from node_agent.bytecode_supply import BUILTINS_FROM_BYTECODE, BuiltinBytecode, FetchingLoad
from node_agent.cgroups import PodCgroupResolver, cgroup_v2_mount
from node_agent.compile_pool import DEFAULT_CONCURRENCY, CompilePool
from node_agent.compile_queue import CompileQueue
from node_agent.fast_wiring import FAST_PATH_NICE, FastPathRuntime
from node_agent.headers import MODULES_DIR
from node_agent.hook import DEFAULT_SOCKET
from node_agent.kernel.bpffs import DEFAULT_ROOT, BpffsBackend
from node_agent.kernel.compile_cgroup import CompileLimits, node_prefix
from node_agent.kernel.loader import DEFAULT_BYTECODE_DIR
from node_agent.metrics import DEFAULT_ADDRESS, AgentMetrics, serve
from node_agent.model import DEFAULT_MAX_MAP_BYTES, Trust
from node_agent.oci import flags as bytecode_flags
from node_agent.oci.secrets import secret_reader
from node_agent.reconcile import Reconciler
from node_agent.serialized_backend import SerializedBackend

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
        "--compile-concurrency",
        type=int,
        default=int(os.environ.get("BPFLEET_COMPILE_CONCURRENCY") or DEFAULT_CONCURRENCY),
        help="compiles at a time, outside the reconcile pass, fair across namespaces "
        "(env BPFLEET_COMPILE_CONCURRENCY, default 2)",
    )
    parser.add_argument(
        "--metrics-address",
        default=os.environ.get("BPFLEET_METRICS_ADDRESS", DEFAULT_ADDRESS),
        help="host:port of /metrics and /healthz (no authentication; default loopback only); empty "
        "disables (env BPFLEET_METRICS_ADDRESS)",
    )
    parser.add_argument(
        "--hook-socket",
        default=os.environ.get("BPFLEET_HOOK_SOCKET", str(DEFAULT_SOCKET)),
        help="unix socket where container-start hooks ask whether a pod is ready; empty disables "
        "(env BPFLEET_HOOK_SOCKET)",
    )
    parser.add_argument(
        "--fast-path-nice",
        type=int,
        default=int(os.environ.get("BPFLEET_FAST_PATH_NICE", str(FAST_PATH_NICE))),
        help="the nice value of the thread that attaches a new pod's programs when its cgroup "
        f"appears (default {FAST_PATH_NICE}: ahead of the node's other work; 0 leaves it as is; env "
        "BPFLEET_FAST_PATH_NICE)",
    )
    parser.add_argument(
        "--bytecode-dir",
        type=Path,
        default=Path(os.environ.get("BPFLEET_BYTECODE_DIR", str(DEFAULT_BYTECODE_DIR))),
        help="the agent's own CO-RE objects (`make bytecode`): the pod filter of bytecode programs",
    )
    parser.add_argument(
        "--modules-dir",
        type=Path,
        default=Path(os.environ.get("BPFLEET_MODULES_DIR", str(MODULES_DIR))),
        help="the host's /lib/modules, where BCC finds the kernel headers (env BPFLEET_MODULES_DIR)",
    )
    parser.add_argument(
        "--builtins-from-bytecode",
        choices=BUILTINS_FROM_BYTECODE,
        default=os.environ.get("BPFLEET_BUILTINS_FROM_BYTECODE", "always"),
        help="run builtins from the agent's CO-RE objects (milliseconds, no compiler) instead of "
        "compiling their C (hundreds of ms each): always (default), auto (only on a node without "
        "kernel headers), never (env BPFLEET_BUILTINS_FROM_BYTECODE)",
    )
    parser.add_argument("--log-level", default=os.environ.get("BPFLEET_LOG_LEVEL", "INFO"))
    bytecode_flags.add_arguments(parser)
    args = parser.parse_args(argv)
    if not args.node:
        parser.error("the node name is required: --node or NODE_NAME")
    if args.max_map_bytes <= 0 or args.compile_concurrency < 1:
        parser.error("--max-map-bytes and --compile-concurrency must be positive")
    # Checked here so that a bad key or host stops the agent at start, not at the first image.
    args.bytecode_policy = bytecode_flags.policy(args, parser)
    return args


def _exit_while_starting(_signum: int, _frame: FrameType | None) -> None:
    # Stopped before it serves: the default action would leave the spare compile worker and its
    # cgroup behind; SystemExit runs atexit, which stops and removes both.
    raise SystemExit(0)


def main(argv: list[str] | None = None) -> None:
    signal.signal(signal.SIGTERM, _exit_while_starting)
    signal.signal(signal.SIGINT, _exit_while_starting)
    args = parse_args(argv)
    logs.setup(args.log_level)
    # What image sources are held to (pulls happen in the compile pool, FetchingLoad).
    bytecode_policy = args.bytecode_policy
    log.info(
        "bytecode policy",
        extra={
            "publicKeys": len(bytecode_policy.public_keys),
            "requireSignatures": bytecode_policy.require_signatures,
            "allowedRegistries": ",".join(bytecode_policy.allowed_registries),
        },
    )
    include_dir = Path(str(resources.files("bpfleet_bpf") / "include"))
    backend = BpffsBackend(
        root=args.bpffs_root,
        include_dirs=(include_dir,),
        tracefs=features.tracefs() or Path("/sys/kernel/tracing"),
        node_wide_prelude=(include_dir / "node_wide_prelude.h").read_text(),
        proc=args.proc_root,
        compile_limits=CompileLimits(
            cpu_seconds=args.compile_cpu_seconds, memory_bytes=args.compile_memory_bytes
        ),
        bytecode_dir=args.bytecode_dir,
        compile_cgroup_prefix=node_prefix(args.node),
        compile_cgroups_owned=True,
    )
    backend.loader.compile_cgroup_placement()  # now: takes over what a killed predecessor left
    node_features = features.probe(backend, args.modules_dir)
    if node_features.no_headers:
        log.warning(node_features.no_headers, extra={"node": args.node})
    if node_features.btf:  # bytecode can run here: its first build need not start a worker
        backend.loader.prime_bytecode()
    resolver = PodCgroupResolver(args.kubelet_cgroup_root or cgroup_v2_mount())
    metrics = AgentMetrics(resolver, backend)
    # One lock around kernel changes: the pass and the fast path attach through the same backend;
    # compiles (load) run beside both, in the pool.
    kernel = SerializedBackend(metrics.timed(backend))
    api = RestClient.load(args.kubeconfig)
    build = FetchingLoad(kernel.load, bytecode_policy, secret_reader(api))
    pool = CompilePool(build, concurrency=args.compile_concurrency, queue=CompileQueue())
    # The observed model is read from the kernel again at every resync, not every pass.
    resync_due = observed.every(args.resync, time.monotonic)
    reconciler = Reconciler(kernel, resolver, node_features, pool, resync_due)
    agent = Agent(
        api,
        args.node,
        reconciler,
        node_features,
        resync=args.resync,
        metrics=metrics,
        trust=Trust(system_namespace=names.system_namespace(), max_map_bytes=args.max_map_bytes),
    )
    builtins = BuiltinBytecode(
        Path(str(resources.files("bpfleet_bpf") / "programs")),
        args.bytecode_dir,
        args.builtins_from_bytecode,
        no_headers=node_features.no_headers is not None,
    )
    if builtins.active:
        log.info("builtins run from bytecode", extra={"bytecodeDir": str(args.bytecode_dir)})
    agent.versions.substitute = builtins.substitute
    serve(
        args.metrics_address,
        metrics,
        lambda: agent.programs.synced.is_set() and agent.pods.synced.is_set(),
        agent.resync,
    )

    def _stop(signum: int, _frame: FrameType | None) -> None:
        # Programs stay attached: stopping the agent never stops the data plane.
        log.info("stopping; attached programs keep running", extra={"signal": signum})
        agent.stop()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    fast = FastPathRuntime(
        agent, reconciler, Path(args.hook_socket) if args.hook_socket else None, nice=args.fast_path_nice
    )
    fast.start()
    try:
        agent.run()
    finally:
        fast.stop()
    sys.exit(0)


if __name__ == "__main__":
    main()
