"""A pod's network namespace and interfaces, for programs that attach to network devices.

The pod's namespace is found through a process of the pod (every process in the pod cgroup shares
it), the way CNI plugins and container runtimes reach it. Work inside it runs on a short-lived
thread that joins the namespace, so the agent's own threads never leave the host's.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import socket
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from node_agent.cgroups import processes
from node_agent.errors import AttachFailed

T = TypeVar("T")
_CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


def pod_netns(pod_cgroup: Path, proc: Path = Path("/proc")) -> Path:
    """The network namespace of the pod whose cgroup this is; AttachFailed when it has no process."""
    for pid in processes(pod_cgroup):
        path = proc / str(pid) / "ns" / "net"
        if path.exists():
            if os.stat(path).st_ino == os.stat(proc / "self" / "ns" / "net").st_ino:
                raise AttachFailed("the pod uses the host network; Tc and Xdp attach to pod interfaces only")
            return path
    raise AttachFailed(f"no process runs in {pod_cgroup} yet, so its network namespace is unknown")


def run_in_netns(netns: Path, work: Callable[[], T]) -> T:
    """Runs `work` on a thread inside the namespace and returns its result or raises its error."""
    outcome: list[T] = []
    failure: list[BaseException] = []

    def thread() -> None:
        try:
            with open(netns) as ns:
                if _libc.setns(ns.fileno(), _CLONE_NEWNET) != 0:
                    err = ctypes.get_errno()
                    raise AttachFailed(f"entering {netns}: {os.strerror(err)}")
            outcome.append(work())
        except BaseException as e:
            failure.append(e)

    worker = threading.Thread(target=thread, name=f"netns {netns}")
    worker.start()
    worker.join()
    if failure:
        raise failure[0]
    return outcome[0]


def interface_index(name: str) -> int:
    """The ifindex of an interface in the calling thread's namespace."""
    try:
        return socket.if_nametoindex(name)
    except OSError:
        raise AttachFailed(f"the pod has no interface {name}") from None


def veth_peer_index(name: str) -> int:
    """For a veth in the calling thread's namespace, the ifindex of its peer (on the host side)."""
    from pyroute2 import IPRoute

    with IPRoute() as ipr:
        links = ipr.link("get", index=interface_index(name))
        peer = links[0].get_attr("IFLA_LINK") if links else None
    if not peer:
        raise AttachFailed(f"the pod's {name} is not one end of a veth pair: it has no host side")
    return int(peer)


def pod_interface_index(pod_netns: Path, name: str, side: str) -> int:
    """The ifindex of the pod's interface `name` (in the pod's namespace), or, for side Host, of the
    host end of its veth (in the agent's)."""
    if side == "Host":
        return run_in_netns(pod_netns, lambda: veth_peer_index(name))
    return run_in_netns(pod_netns, lambda: interface_index(name))
