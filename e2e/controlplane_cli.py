"""The control plane's command line (e2e/controlplane.py):

python -m e2e.controlplane [--state-dir DIR] {up,down,status,kubeconfig}
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

from e2e.controlplane import ControlPlane
from e2e.controlplane_setup import COMPONENTS, log


def _cmd_up(plane: ControlPlane) -> int:
    plane.start()
    plane.wait_ready()
    print(f"# kubeconfig: {plane.kubeconfig}")
    print(f"export KUBECONFIG={plane.kubeconfig}")
    return 0


def _cmd_down(plane: ControlPlane) -> int:
    plane.stop()
    log("control plane stopped", state=plane.state_dir)
    return 0


def _cmd_status(plane: ControlPlane) -> int:
    healthy = plane.healthy()
    pids = plane.pids()
    alive = {name: pid for name, pid in pids.items() if plane.process_alive(name, pid)}
    state = "running" if healthy else ("degraded" if alive else "stopped")
    print(f"state:   {state}  ({plane.state_dir})")
    for name in COMPONENTS:
        print(f"  {name:<24} {f'pid {alive[name]}' if name in alive else 'not running'}")
    if healthy:
        print(f"server:  {plane.server_url}")
        print(f"kubeconfig: {plane.kubeconfig}")
    return 0 if healthy else 1


def _cmd_kubeconfig(plane: ControlPlane) -> int:
    print(plane.kubeconfig)
    return 0 if plane.kubeconfig.exists() else 1


COMMANDS: dict[str, Callable[[ControlPlane], int]] = {
    "up": _cmd_up,
    "down": _cmd_down,
    "status": _cmd_status,
    "kubeconfig": _cmd_kubeconfig,
}


def main(argv: list[str] | None = None) -> int:
    state_option = argparse.ArgumentParser(add_help=False)
    # SUPPRESS lets --state-dir sit before or after the subcommand without one erasing the other.
    state_option.add_argument(
        "--state-dir",
        type=Path,
        default=argparse.SUPPRESS,
        help="state directory (default $BPFLEET_STATE_DIR, else ~/.cache/bpfleet/run/default)",
    )
    parser = argparse.ArgumentParser(
        prog="python -m e2e.controlplane",
        parents=[state_option],
        description="Local Kubernetes control plane on 127.0.0.1.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("up", parents=[state_option], help="start (or reuse) and wait until ready")
    sub.add_parser("down", parents=[state_option], help="stop the processes")
    sub.add_parser("status", parents=[state_option], help="show processes; exit 0 only when healthy")
    sub.add_parser("kubeconfig", parents=[state_option], help="print the kubeconfig path")
    args = parser.parse_args(argv)
    plane = ControlPlane(state_dir=getattr(args, "state_dir", None))
    return COMMANDS[args.command](plane)
