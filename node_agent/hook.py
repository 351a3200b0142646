"""The container-start hook: `python -m node_agent.hook`, run by the runtime as an OCI
createRuntime (or createContainer) hook, holds a container's start until bpfleet has attached
every program selecting its pod.

It reads the OCI state JSON on stdin; the pod UID comes from the annotations the CRI runtimes set
(containerd: io.kubernetes.cri.sandbox-uid; CRI-O: io.kubernetes.pod.uid, or inside
io.kubernetes.cri-o.Labels). A container of no pod (no such annotation), and a pod's sandbox, are
let through at once.
Fail-open by default: an agent that does not answer in time, or is not running, lets the container
start (and the pass attaches moments later); --fail-closed refuses the start instead (exit 1, so
the runtime fails the container and kubelet retries it).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
from pathlib import Path
from typing import Any

# Standard library only: this runs at every container start, and must start fast.
DEFAULT_SOCKET = Path("/run/bpfleet/agent.sock")

_UID_ANNOTATIONS = ("io.kubernetes.cri.sandbox-uid", "io.kubernetes.pod.uid")
_CRIO_LABELS = "io.kubernetes.cri-o.Labels"
_NAME_ANNOTATIONS = ("io.kubernetes.cri.container-name", "io.kubernetes.container.name")
_TYPE_ANNOTATIONS = ("io.kubernetes.cri.container-type", "io.kubernetes.cri-o.ContainerType")


def pod_of(state: Any) -> tuple[str, str]:
    """(pod UID, container name) from an OCI state; ("", "") for a container of no pod, or a
    pod's sandbox."""
    annotations = state.get("annotations") if isinstance(state, dict) else None
    if not isinstance(annotations, dict):
        return "", ""
    if any(annotations.get(k) == "sandbox" for k in _TYPE_ANNOTATIONS):
        # The pause container sends nothing; holding it would only delay the pod's own containers,
        # whose hooks find the sandbox running (so Tc and Xdp can attach then).
        return "", ""
    uid = next((annotations[k] for k in _UID_ANNOTATIONS if isinstance(annotations.get(k), str)), "")
    if not uid and isinstance(annotations.get(_CRIO_LABELS), str):
        try:
            labels = json.loads(annotations[_CRIO_LABELS])
        except ValueError:
            labels = {}
        uid = labels.get("io.kubernetes.pod.uid", "") if isinstance(labels, dict) else ""
    name = next((annotations[k] for k in _NAME_ANNOTATIONS if isinstance(annotations.get(k), str)), "")
    return (uid if isinstance(uid, str) else ""), name


def ask(socket_path: Path, uid: str, container: str, timeout: float) -> dict[str, Any]:
    """Asks the agent; raises OSError or ValueError when it does not answer."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
        conn.settimeout(timeout + 2.0)  # the agent answers at its deadline; this one is a backstop
        conn.connect(str(socket_path))
        request = {"pod": uid, "container": container, "timeout": timeout}
        conn.sendall(json.dumps(request).encode() + b"\n")
        with conn.makefile("rb") as replies:
            reply = json.loads(replies.readline(64 * 1024))
    if not isinstance(reply, dict):
        raise ValueError("the agent's reply is not an object")
    return reply


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m node_agent.hook", description=__doc__)
    socket_path = Path(os.environ.get("BPFLEET_HOOK_SOCKET") or DEFAULT_SOCKET)
    parser.add_argument("--socket", type=Path, default=socket_path)
    parser.add_argument("--timeout", type=float, default=5.0, help="seconds to hold the start at most")
    parser.add_argument("--fail-closed", action="store_true", help="refuse the start when not ready")
    args = parser.parse_args(argv)
    try:
        state = json.loads(sys.stdin.read(1 << 20))
    except ValueError:
        state = None
    uid, container = pod_of(state)
    if not uid:
        return 0  # not a pod's container: nothing of bpfleet's to wait for
    try:
        reply = ask(args.socket, uid, container, args.timeout)
    except (OSError, ValueError) as e:
        reply = {"ready": False, "error": f"agent not reachable: {e}"}
    if reply.get("ready") is True:
        return 0
    why = reply.get("error") or f"not attached yet: {', '.join(map(str, reply.get('missing') or []))}"
    verdict = "refusing the start" if args.fail_closed else "starting anyway (fail-open)"
    print(f"bpfleet: pod {uid}: {why}; {verdict}", file=sys.stderr)
    return 1 if args.fail_closed else 0


if __name__ == "__main__":
    sys.exit(main())
