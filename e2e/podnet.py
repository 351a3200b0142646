"""Pod networking for simulated pods, the way a CNI plugin does it: a network namespace per pod and
a veth pair, `eth0` inside it and `bpf<uid>` on the host, with a /30 of link-local addresses.

Traffic between the host and a pod stays on this machine: both ends are ours."""

from __future__ import annotations

import itertools
import random
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass

# 169.254.128.0/17 in /30 blocks; a random start keeps concurrent runs apart.
_BLOCKS = itertools.count(random.randrange(0, 8000))


@dataclass(frozen=True)
class PodNetwork:
    netns: str
    host_interface: str
    host_ip: str
    pod_ip: str
    pod_interface: str = "eth0"

    def exec_argv(self, argv: Sequence[str]) -> list[str]:
        return ["ip", "netns", "exec", self.netns, *argv]


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True)


def _addresses(block: int) -> tuple[str, str]:
    base = (169 << 24) | (254 << 16) | (128 << 8) + block * 4
    as_text = [".".join(str((base + offset) >> shift & 255) for shift in (24, 16, 8, 0)) for offset in (1, 2)]
    return as_text[0], as_text[1]


def create(uid: str) -> PodNetwork:
    suffix = uid.replace("-", "")[:11]
    host_ip, pod_ip = _addresses(next(_BLOCKS) % 8192)
    net = PodNetwork(netns=f"bpfleet-{suffix}", host_interface=f"bpf{suffix}", host_ip=host_ip, pod_ip=pod_ip)
    _ip("netns", "add", net.netns)
    try:
        _ip(
            "link",
            "add",
            net.host_interface,
            "type",
            "veth",
            "peer",
            "name",
            net.pod_interface,
            "netns",
            net.netns,
        )
        _ip("addr", "add", f"{host_ip}/30", "dev", net.host_interface)
        _ip("link", "set", net.host_interface, "up")
        _ip("-n", net.netns, "addr", "add", f"{pod_ip}/30", "dev", net.pod_interface)
        _ip("-n", net.netns, "link", "set", net.pod_interface, "up")
        _ip("-n", net.netns, "link", "set", "lo", "up")
    except subprocess.CalledProcessError:
        delete(net)
        raise
    return net


def delete(net: PodNetwork) -> None:
    """Removes the namespace; the kernel removes the veth pair with it."""
    subprocess.run(["ip", "netns", "del", net.netns], check=False, capture_output=True)
