"""Host-level targets of scope-Node programs (ClusterEbpfPrograms): no pod is involved.

Under a version's links/ directory:

    node            the perf-event link of node-wide tracing, with no pod filter
    if-<name>       one tcx or XDP link per host interface the pattern matched

Interface names may hold characters bpffs refuses ('.') or that would be ambiguous, so every byte
outside [A-Za-z0-9-] of the name is written _<hex>: reversible, whatever the name.
"""

from __future__ import annotations

import socket
import string
from pathlib import Path

from node_agent import errors
from node_agent.kernel import links, syscalls
from node_agent.kernel.attach_types import KernelAttach
from node_agent.kernel.backend import NODE_TARGET, Attachment, ProgramRef
from node_agent.kernel.pod_filter import NODE_LINK

IF_LINK_PREFIX = "if-"
_PLAIN = frozenset((string.ascii_letters + string.digits + "-").encode())


def interfaces() -> list[str]:
    """The interfaces of the calling thread's network namespace (the agent's: the host's)."""
    return sorted(name for _, name in socket.if_nameindex())


def interface_index(name: str) -> int:
    """The ifindex of a host interface, 0 when there is none of that name."""
    try:
        return socket.if_nametoindex(name)
    except OSError:
        return 0


def link_name(target: str) -> str:
    if target == NODE_TARGET:
        return NODE_LINK
    raw = target.encode("utf-8", "surrogateescape")
    return IF_LINK_PREFIX + "".join(chr(b) if b in _PLAIN else f"_{b:02x}" for b in raw)


def target_of(pin_name: str) -> str | None:
    """The target a link pin stands for; None for pins of other scopes."""
    if pin_name == NODE_LINK:
        return NODE_TARGET
    if not pin_name.startswith(IF_LINK_PREFIX):
        return None
    encoded, raw, i = pin_name[len(IF_LINK_PREFIX) :], bytearray(), 0
    while i < len(encoded):
        if encoded[i] == "_":
            raw.append(int(encoded[i + 1 : i + 3], 16))
            i += 3
        else:
            raw.append(ord(encoded[i]))
            i += 1
    return raw.decode("utf-8", "surrogateescape")


def attachments(ref: ProgramRef, links_dir: Path) -> dict[str, Attachment]:
    found: dict[str, Attachment] = {}
    for pin in sorted(links_dir.glob("*")):
        target = target_of(pin.name)
        info = links.info(pin) if target is not None else None
        if target is None or info is None:
            continue
        live = info.target_id
        if target != NODE_TARGET and info.target_id != interface_index(target):
            live = 0  # the interface is gone (the kernel detached the link), or the name is another's now
        found[target] = Attachment(ref, target, info.id, live)
    return found


def attach_interface(
    ref: ProgramRef, links_dir: Path, prog_pin: Path, interface: str, attach: KernelAttach
) -> Attachment:
    """A tcx or XDP link on the host interface, replacing one left on an interface of that name
    that went away."""
    pin = links_dir / link_name(interface)
    links.detach(pin)
    ifindex = interface_index(interface)
    if not ifindex:
        raise errors.AttachFailed(f"this node has no interface {interface}")

    def create(prog_fd: int) -> int:
        return syscalls.link_create_netdev(prog_fd, ifindex, attach.attach_type, attach.flags)

    links_dir.mkdir(exist_ok=True)
    try:
        info = links.pin_new(prog_pin, pin, create)
    except (OSError, errors.KernelError) as e:
        raise errors.AttachFailed(f"attaching to interface {interface}: {e}") from e
    return Attachment(ref, interface, info.id, info.target_id)
