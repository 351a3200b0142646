"""What this node's kernel can run, probed once at start and published for users.

A program whose attach type the node cannot serve fails on this node only, with reason
UnsupportedOnNode and a message naming the missing feature; it is never compiled. C sources need
kernel headers (BCC compiles against them); bytecode needs none, but its CO-RE relocations need the
kernel's BTF (/sys/kernel/btf/vmlinux).
"""

from __future__ import annotations

import platform
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from node_agent.headers import MODULES_DIR, check_kernel_headers
from node_agent.kernel import attach_types as at

# API attach type -> (program type, expected attach type to load it with).
_PROGRAM_TYPES = {
    "CgroupSkb": (at.PROG_TYPE_CGROUP_SKB, 0),
    "CgroupSockAddr": (at.PROG_TYPE_CGROUP_SOCK_ADDR, at.CGROUP_INET4_CONNECT),
    "CgroupSock": (at.PROG_TYPE_CGROUP_SOCK, at.CGROUP_INET_SOCK_CREATE),
    "CgroupSysctl": (at.PROG_TYPE_CGROUP_SYSCTL, at.CGROUP_SYSCTL),
    "CgroupDevice": (at.PROG_TYPE_CGROUP_DEVICE, at.CGROUP_DEVICE),
    "Tc": (at.PROG_TYPE_SCHED_CLS, 0),
    "Xdp": (at.PROG_TYPE_XDP, 0),
    "Tracepoint": (at.PROG_TYPE_TRACEPOINT, 0),
    "Kprobe": (at.PROG_TYPE_KPROBE, 0),
    "Kretprobe": (at.PROG_TYPE_KPROBE, 0),
    "Uprobe": (at.PROG_TYPE_KPROBE, 0),
    "Uretprobe": (at.PROG_TYPE_KPROBE, 0),
}
_NEEDS_KPROBES = {"Kprobe", "Kretprobe"}
# Uprobes are opened through the uprobe PMU (perf_event_open), which needs no tracefs.
_NEEDS_UPROBES = {"Uprobe", "Uretprobe"}
_NEEDS_TRACEFS = {"Tracepoint", "Kprobe", "Kretprobe"}
_EVENT_SOURCES = Path("/sys/bus/event_source/devices")
VMLINUX_BTF = Path("/sys/kernel/btf/vmlinux")


@dataclass(frozen=True)
class NodeFeatures:
    kernel: str
    btf: bool
    tracefs: Path | None
    kprobes: bool
    uprobes: bool = False
    program_types: dict[str, bool] = field(default_factory=dict)
    # Why nothing can be compiled here (no kernel headers for BCC), or None.
    no_headers: str | None = None

    def unsupported(self, api_type: str, bytecode: bool = False) -> str | None:
        """Why this node cannot serve the attach type (for a C source, or for bytecode), in words for
        the user; None if it can."""
        if bytecode and not self.btf:
            return (
                f"this node's kernel ({self.kernel}) has no BTF ({VMLINUX_BTF}), which bytecode programs need"
            )
        if self.no_headers and not bytecode:
            return self.no_headers
        if api_type in _NEEDS_KPROBES and not self.kprobes:
            return f"kprobes are not available on this kernel ({self.kernel}: no kprobe event source)"
        if api_type in _NEEDS_UPROBES and not self.uprobes:
            return f"uprobes are not available on this kernel ({self.kernel}: no uprobe event source)"
        if not self.program_types.get(api_type, False):
            return f"the kernel ({self.kernel}) does not load {api_type} programs"
        if api_type in _NEEDS_TRACEFS and self.tracefs is None:
            return "tracefs is not mounted (at /sys/kernel/tracing or /sys/kernel/debug/tracing)"
        return None

    def as_status(self) -> dict[str, Any]:
        return {
            "kernel": self.kernel,
            "btf": self.btf,
            "kprobes": self.kprobes,
            "tracefs": str(self.tracefs) if self.tracefs else None,
            "kernelHeaders": self.no_headers is None,
            "attachTypes": {name: self.unsupported(name) is None for name in _PROGRAM_TYPES},
        }


def tracefs() -> Path | None:
    for candidate in (Path("/sys/kernel/tracing"), Path("/sys/kernel/debug/tracing")):
        if (candidate / "events").is_dir():
            return candidate
    return None


class ProgramTypeProbe(Protocol):
    """The part of the kernel backend probing needs (KernelBackend.probe_program_type)."""

    def probe_program_type(self, prog_type: int, expected_attach_type: int = 0) -> bool: ...


def probe(kernel: ProgramTypeProbe, modules_dir: Path = MODULES_DIR) -> NodeFeatures:
    """What this node can run: program types are loaded through the backend, the rest is read from
    sysfs and the kernel headers (under `modules_dir`, the host's /lib/modules)."""
    return NodeFeatures(
        kernel=platform.release(),
        btf=VMLINUX_BTF.exists(),
        tracefs=tracefs(),
        kprobes=(_EVENT_SOURCES / "kprobe").is_dir(),
        uprobes=(_EVENT_SOURCES / "uprobe").is_dir(),
        no_headers=check_kernel_headers(modules_dir=modules_dir),
        program_types={name: kernel.probe_program_type(*args) for name, args in _PROGRAM_TYPES.items()},
    )
