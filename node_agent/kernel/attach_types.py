"""How each spec.attach of the API maps onto kernel program and attach types."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

# enum bpf_prog_type
PROG_TYPE_CGROUP_SKB = 8
PROG_TYPE_CGROUP_SOCK_ADDR = 18

# enum bpf_attach_type
CGROUP_INET_INGRESS = 0
CGROUP_INET_EGRESS = 1
CGROUP_INET4_CONNECT = 10
CGROUP_INET6_CONNECT = 11


@dataclass(frozen=True)
class KernelAttach:
    prog_type: int
    attach_type: int
    # Whether the kernel wants the attach type at load time (expected_attach_type).
    expected_at_load: bool

    @property
    def load_attach_type(self) -> int:
        return self.attach_type if self.expected_at_load else -1


_CGROUP_SKB = {
    "Ingress": KernelAttach(PROG_TYPE_CGROUP_SKB, CGROUP_INET_INGRESS, False),
    "Egress": KernelAttach(PROG_TYPE_CGROUP_SKB, CGROUP_INET_EGRESS, False),
}
_CGROUP_SOCK_ADDR = {
    "Connect4": KernelAttach(PROG_TYPE_CGROUP_SOCK_ADDR, CGROUP_INET4_CONNECT, True),
    "Connect6": KernelAttach(PROG_TYPE_CGROUP_SOCK_ADDR, CGROUP_INET6_CONNECT, True),
}


class UnknownAttach(ValueError):
    pass


def kernel_attach(attach: dict[str, Any]) -> KernelAttach:
    """The kernel types for a spec.attach; the CRD schema has already validated its shape."""
    kind = attach.get("type")
    if kind == "CgroupSkb":
        table, key = _CGROUP_SKB, attach.get("direction", "")
    elif kind == "CgroupSockAddr":
        table, key = _CGROUP_SOCK_ADDR, attach.get("hook", "")
    else:
        raise UnknownAttach(f"attach type {kind!r} is not supported by this agent")
    try:
        return table[key]
    except KeyError:
        raise UnknownAttach(f"{kind} has no {key!r}") from None
