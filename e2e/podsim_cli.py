"""The pod simulator's command line: `python -m e2e.podsim ...` (see e2e/podsim.py)."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

import kubernetes.client

from e2e.podsim import PodSimulator
from e2e.sim_cgroups import cleanup_cgroup_tree

# --- CLI -------------------------------------------------------------------------------------------------


def _parse_labels(pairs: Sequence[str]) -> dict[str, str]:
    labels = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise argparse.ArgumentTypeError(f"label {pair!r} is not key=value")
        labels[key] = value
    return labels


def _api_client(kubeconfig: str | None) -> kubernetes.client.ApiClient:
    import kubernetes.config  # only the CLI loads kubeconfigs; library callers pass a client

    return kubernetes.config.new_client_from_config(config_file=kubeconfig)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m e2e.podsim", description="Simulated kubelet pods.")
    parser.add_argument("--node", required=True)
    parser.add_argument("--cgroup-root", type=Path, required=True)
    parser.add_argument("--driver", choices=["systemd", "cgroupfs"], default="systemd")
    parser.add_argument("--kubeconfig", default=None, help="default: $KUBECONFIG or ~/.kube/config")
    sub = parser.add_subparsers(dest="command", required=True)
    node = sub.add_parser("ensure-node", help="create the Node and mark it Ready")
    node.add_argument("--label", action="append", default=[])
    pod = sub.add_parser("create-pod", help="create a Running pod; its process outlives this command")
    pod.add_argument("--namespace", required=True)
    pod.add_argument("--name", required=True)
    pod.add_argument("--label", action="append", default=[])
    pod.add_argument("--qos", default="BestEffort")
    sub.add_parser("cleanup-tree", help="kill processes in and remove the whole cgroup root")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="[podsim] %(message)s")

    if args.command == "cleanup-tree":
        return 0 if cleanup_cgroup_tree(args.cgroup_root) else 1
    sim = PodSimulator(_api_client(args.kubeconfig), args.node, args.cgroup_root, args.driver)
    if args.command == "ensure-node":
        sim.ensure_node(_parse_labels(args.label))
        return 0
    created = sim.create_pod(args.namespace, args.name, _parse_labels(args.label), args.qos)
    print(json.dumps(created.describe(), indent=2))
    return 0
