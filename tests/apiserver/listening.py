"""Who listens where, read from the kernel: the TCP sockets of this network namespace (the host's,
where the agent runs with hostNetwork) and the addresses of its interfaces."""

from __future__ import annotations

import ipaddress
import socket
import struct
from pathlib import Path

from pyroute2 import IPRoute

_LISTEN = "0A"  # TCP_LISTEN in /proc/net/tcp's st column


def _address(hex_address: str) -> str:
    # The kernel prints each 32-bit word of the address in the host's byte order.
    words = [hex_address[i : i + 8] for i in range(0, len(hex_address), 8)]
    packed = b"".join(struct.pack("=I", int(word, 16)) for word in words)
    return str(ipaddress.ip_address(packed))


def tcp_listeners(port: int) -> set[str]:
    """The local addresses of the sockets listening on `port`, IPv4 and IPv6."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        path = Path(table)
        if not path.exists():
            continue
        for line in path.read_text().splitlines()[1:]:
            local, _, state = line.split()[1:4]
            address, _, hex_port = local.partition(":")
            if state == _LISTEN and int(hex_port, 16) == port:
                found.add(_address(address))
    return found


def non_loopback_ipv4() -> list[str]:
    """This namespace's IPv4 addresses other than 127.0.0.0/8."""
    with IPRoute() as ip:
        addresses = [a.get_attr("IFA_ADDRESS") for a in ip.get_addr(family=socket.AF_INET)]
    return [a for a in addresses if a and not ipaddress.ip_address(a).is_loopback]


def connect_refused(host: str, port: int) -> bool:
    with socket.socket() as probe:
        probe.settimeout(2)
        try:
            probe.connect((host, port))
        except ConnectionRefusedError:
            return True
    return False
