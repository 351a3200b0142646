"""How each spec.attach of the API maps onto kernel program and attach types."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

# enum bpf_prog_type
PROG_TYPE_KPROBE = 2
PROG_TYPE_SCHED_CLS = 3
PROG_TYPE_TRACEPOINT = 5
PROG_TYPE_XDP = 6
PROG_TYPE_CGROUP_SKB = 8
PROG_TYPE_CGROUP_SOCK = 9
PROG_TYPE_CGROUP_DEVICE = 15
PROG_TYPE_CGROUP_SOCK_ADDR = 18
PROG_TYPE_CGROUP_SYSCTL = 23
# The types whose loading needs CAP_PERFMON (they read kernel state of any task).
TRACING_PROG_TYPES = frozenset({PROG_TYPE_KPROBE, PROG_TYPE_TRACEPOINT})

# enum bpf_attach_type
CGROUP_INET_INGRESS = 0
CGROUP_INET_EGRESS = 1
CGROUP_INET_SOCK_CREATE = 2
CGROUP_DEVICE = 6
CGROUP_INET4_BIND = 8
CGROUP_INET6_BIND = 9
CGROUP_INET4_CONNECT = 10
CGROUP_INET6_CONNECT = 11
CGROUP_INET4_POST_BIND = 12
CGROUP_INET6_POST_BIND = 13
CGROUP_UDP4_SENDMSG = 14
CGROUP_UDP6_SENDMSG = 15
CGROUP_SYSCTL = 18
CGROUP_UDP4_RECVMSG = 19
CGROUP_UDP6_RECVMSG = 20
CGROUP_INET4_GETPEERNAME = 29
CGROUP_INET6_GETPEERNAME = 30
CGROUP_INET_SOCK_RELEASE = 34
XDP = 37
PERF_EVENT = 41
TCX_INGRESS = 46
TCX_EGRESS = 47

# XDP modes (link flags)
_XDP_MODES = {"Auto": 0, "Generic": 1 << 1, "Native": 1 << 2}

# Where the program runs for the selected pods.
PER_POD_CGROUP = "cgroup"  # one cgroup link per pod: the kernel scopes it to the pod
NODE_WIDE_FILTERED = "filtered"  # one attachment per node; the program filters on the pods' cgroup ids
PER_POD_NETDEV = "netdev"  # one link per pod on an interface of the pod (or its host-side veth)
# One uprobe link per distinct binary file the selected pods run; the program filters as above.
PER_BINARY_FILTERED = "binary"
# The scopes whose programs filter on bpfleet_pods: compiled with the node-wide prelude.
FILTERED_SCOPES = (NODE_WIDE_FILTERED, PER_BINARY_FILTERED)
# Host-level targets, for ClusterEbpfPrograms with scope Node only: no pod is involved.
NODE_WIDE = "node"  # one perf-event link per node, no pod filter: every process of the node
NODE_NETDEV = "node-netdev"  # one link per host interface whose name matches a pattern
HOST_SCOPES = (NODE_WIDE, NODE_NETDEV)


@dataclass(frozen=True)
class KernelAttach:
    prog_type: int
    attach_type: int
    # Whether the kernel wants the attach type at load time (expected_attach_type).
    expected_at_load: bool
    scope: str = PER_POD_CGROUP
    # What is hooked: "category:name" of a tracepoint, a kernel function, an interface name (a
    # name or fnmatch pattern over the host's interfaces for NODE_NETDEV), or the path of a binary
    # inside the pod's container.
    target: str = ""
    # For interfaces: which end of the pod's veth ("Pod" or "Host") and the link flags (XDP mode).
    side: str = ""
    flags: int = 0
    # For uprobes: where in the binary (a symbol, else a file offset), whether on return, and the
    # container whose root the binary is looked up in ("" for the first process that has it).
    symbol: str = ""
    offset: int = 0
    retprobe: bool = False
    container: str = ""

    @property
    def load_attach_type(self) -> int:
        return self.attach_type if self.expected_at_load else -1


def _cgroup(prog_type: int, attach_type: int, expected_at_load: bool = True) -> KernelAttach:
    return KernelAttach(prog_type, attach_type, expected_at_load)


_SKB = {
    "Ingress": _cgroup(PROG_TYPE_CGROUP_SKB, CGROUP_INET_INGRESS, expected_at_load=False),
    "Egress": _cgroup(PROG_TYPE_CGROUP_SKB, CGROUP_INET_EGRESS, expected_at_load=False),
}
_SOCK_ADDR_HOOKS = {
    "Connect4": CGROUP_INET4_CONNECT,
    "Connect6": CGROUP_INET6_CONNECT,
    "Sendmsg4": CGROUP_UDP4_SENDMSG,
    "Sendmsg6": CGROUP_UDP6_SENDMSG,
    "Recvmsg4": CGROUP_UDP4_RECVMSG,
    "Recvmsg6": CGROUP_UDP6_RECVMSG,
    "Bind4": CGROUP_INET4_BIND,
    "Bind6": CGROUP_INET6_BIND,
    "GetPeerName4": CGROUP_INET4_GETPEERNAME,
    "GetPeerName6": CGROUP_INET6_GETPEERNAME,
}
_SOCK_HOOKS = {
    "SockCreate": CGROUP_INET_SOCK_CREATE,
    "PostBind4": CGROUP_INET4_POST_BIND,
    "PostBind6": CGROUP_INET6_POST_BIND,
    "SockRelease": CGROUP_INET_SOCK_RELEASE,
}
_BY_HOOK = {
    "CgroupSkb": ("direction", _SKB),
    "CgroupSockAddr": (
        "hook",
        {k: _cgroup(PROG_TYPE_CGROUP_SOCK_ADDR, v) for k, v in _SOCK_ADDR_HOOKS.items()},
    ),
    "CgroupSock": ("hook", {k: _cgroup(PROG_TYPE_CGROUP_SOCK, v) for k, v in _SOCK_HOOKS.items()}),
}
_PLAIN = {
    "CgroupSysctl": _cgroup(PROG_TYPE_CGROUP_SYSCTL, CGROUP_SYSCTL),
    "CgroupDevice": _cgroup(PROG_TYPE_CGROUP_DEVICE, CGROUP_DEVICE),
}


class UnknownAttach(ValueError):
    pass


def kernel_attach(attach: dict[str, Any], scope: str = "Pods") -> KernelAttach:
    """The kernel types for a spec.attach and spec.scope (Pods or Node); the CRD schema has already
    validated their shape."""
    if scope == "Node":
        return _node_scoped(attach)
    if scope != "Pods":
        raise UnknownAttach(f"scope {scope!r} is not supported by this agent")
    kind = attach.get("type", "")
    if kind in _PLAIN:
        return _PLAIN[kind]
    if kind in _BY_HOOK:
        field, table = _BY_HOOK[kind]
        try:
            return table[attach.get(field, "")]
        except KeyError:
            raise UnknownAttach(f"{kind} has no {field} {attach.get(field)!r}") from None
    if kind == "Tracepoint":
        return KernelAttach(PROG_TYPE_TRACEPOINT, PERF_EVENT, False, NODE_WIDE_FILTERED, attach["name"])
    if kind == "Tc":
        attach_type = {"Ingress": TCX_INGRESS, "Egress": TCX_EGRESS}[attach["direction"]]
        interface, side = attach.get("interface", "eth0"), attach.get("side", "Pod")
        return KernelAttach(PROG_TYPE_SCHED_CLS, attach_type, False, PER_POD_NETDEV, interface, side)
    if kind == "Xdp":
        mode = _XDP_MODES[attach.get("mode", "Auto")]
        interface = attach.get("interface", "eth0")
        return KernelAttach(PROG_TYPE_XDP, XDP, False, PER_POD_NETDEV, interface, "Pod", mode)
    if kind in ("Kprobe", "Kretprobe"):
        return KernelAttach(
            PROG_TYPE_KPROBE,
            PERF_EVENT,
            False,
            NODE_WIDE_FILTERED,
            attach["function"],
            retprobe=kind == "Kretprobe",
        )
    if kind in ("Uprobe", "Uretprobe"):
        # Uprobes run programs of the kprobe type.
        return KernelAttach(
            PROG_TYPE_KPROBE,
            PERF_EVENT,
            False,
            PER_BINARY_FILTERED,
            attach["binary"],
            symbol=attach.get("symbol", ""),
            offset=int(attach.get("offset", 0)),
            retprobe=kind == "Uretprobe",
            container=attach.get("container", ""),
        )
    raise UnknownAttach(f"attach type {kind!r} is not supported by this agent")


def _node_scoped(attach: dict[str, Any]) -> KernelAttach:
    """Host-level targets: node-wide tracing without a pod filter, or interfaces of the node."""
    kind = attach.get("type", "")
    if kind == "Tracepoint":
        return KernelAttach(PROG_TYPE_TRACEPOINT, PERF_EVENT, False, NODE_WIDE, attach["name"])
    if kind in ("Kprobe", "Kretprobe"):
        return KernelAttach(
            PROG_TYPE_KPROBE, PERF_EVENT, False, NODE_WIDE, attach["function"], retprobe=kind == "Kretprobe"
        )
    if kind in ("Tc", "Xdp"):
        interface = attach.get("interface") or ""
        if not interface or "/" in interface:
            raise UnknownAttach(f"{kind} with scope Node needs attach.interface: a node interface or pattern")
        if kind == "Xdp":
            mode = _XDP_MODES[attach.get("mode", "Auto")]
            return KernelAttach(PROG_TYPE_XDP, XDP, False, NODE_NETDEV, interface, flags=mode)
        if attach.get("side"):
            raise UnknownAttach("Tc with scope Node attaches to node interfaces: attach.side is for pods")
        attach_type = {"Ingress": TCX_INGRESS, "Egress": TCX_EGRESS}[attach["direction"]]
        return KernelAttach(PROG_TYPE_SCHED_CLS, attach_type, False, NODE_NETDEV, interface)
    raise UnknownAttach(f"{kind} cannot have scope Node: it runs for pods (scope Pods)")
