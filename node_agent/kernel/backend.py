"""The one interface through which the agent changes the kernel.

The reconcile logic talks to a KernelBackend only, and so do feature probing (features) and the map
metrics (map_export); BpffsBackend is the real one (bpffs pins, cgroup bpf_links), and tests of the
pure logic use an in-memory fake with the same behaviour.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from node_agent.kernel.attach_types import KernelAttach

if TYPE_CHECKING:
    from node_agent.oci.fetch import ImageSource

# The one target of a node-wide program (scope Node tracing): its event, for every process.
NODE_TARGET = "node"


@dataclass(frozen=True, order=True)
class ProgramRef:
    """One version of one EbpfProgram on this node (namespace "_cluster" for a ClusterEbpfProgram)."""

    namespace: str
    name: str
    version: str

    @property
    def program(self) -> tuple[str, str]:
        return (self.namespace, self.name)


@dataclass(frozen=True)
class Bytecode:
    """A precompiled (CO-RE ELF) program: loaded with libbpf instead of compiled with BCC."""

    data: bytes | None = None  # the ELF itself (ConfigMap, builtins), or
    image: ImageSource | None = None  # to be pulled first
    sha256: str | None = None  # the content it must have, when pinned

    def __repr__(self) -> str:  # not the whole ELF in every log line
        size = f"{len(self.data)} bytes" if self.data is not None else "none"
        return f"Bytecode(data={size}, image={self.image!r}, sha256={self.sha256!r})"


@dataclass(frozen=True)
class ProgramBuild:
    """Everything the compiler needs; its hash is the version."""

    source: str
    function: str
    attach: KernelAttach
    defines: tuple[tuple[str, str], ...] = ()
    # A ClusterEbpfProgram's build: the wider helper allowlist, host-level targets.
    cluster: bool = False
    # The cap on the memory of the program's maps, in bytes; 0 means the agent's default.
    max_map_bytes: int = 0
    # Set: the program is this bytecode (source is then ""), and defines set its .rodata globals.
    bytecode: Bytecode | None = None


@dataclass(frozen=True)
class LoadedProgram:
    ref: ProgramRef
    prog_id: int
    pin_dir: str
    maps: tuple[str, ...] = ()
    # Set by a load with a previous version: its maps this version took over, contents and all,
    # and those of the same name whose layout changed, which start empty.
    kept_maps: tuple[str, ...] = ()
    reset_maps: tuple[str, ...] = ()


@dataclass(frozen=True)
class Attachment:
    ref: ProgramRef
    pod_uid: str  # or, for host-level targets, NODE_TARGET or the interface name
    link_id: int
    # What it is attached to: the pod's cgroup id, or the ifindex of its interface; 0 when that is
    # gone and the kernel dropped the attachment.
    target_id: int

    @property
    def live(self) -> bool:
        return self.target_id != 0


class KernelBackend(Protocol):
    def loaded(self) -> dict[ProgramRef, LoadedProgram]:
        """Every program version bpfleet has loaded on this node, read from the kernel."""
        ...

    def load(self, ref: ProgramRef, build: ProgramBuild, previous: ProgramRef | None = None) -> LoadedProgram:
        """Compiles, verifies and pins a version; raises a ProgramBuildError for the user. With
        `previous` (an older version of the same program), each of its maps whose layout is
        unchanged is used by the new version itself, so its contents carry over."""
        ...

    def unload(self, ref: ProgramRef) -> None:
        """Removes a version and everything pinned for it, its attachments included."""
        ...

    def attachments(self, ref: ProgramRef) -> dict[str, Attachment]:
        """The version's attachments, by pod UID."""
        ...

    def attach(
        self,
        ref: ProgramRef,
        pod_uid: str,
        cgroup_dir: Path,
        attach: KernelAttach,
        *,
        container_id: str = "",
    ) -> Attachment:
        """Attaches the version to a pod's cgroup, alongside any other program; raises AttachFailed.
        `container_id` picks the container whose root a uprobe's binary is looked up in."""
        ...

    def detach(self, ref: ProgramRef, pod_uid: str) -> None: ...

    def update(
        self, old: ProgramRef, new: ProgramRef, pod_uid: str, cgroup_dir: Path, attach: KernelAttach
    ) -> Attachment:
        """Moves the pod's link from version `old` to `new` in place (BPF_LINK_UPDATE): the hook
        runs exactly one of them at every moment, and the link keeps its id. Afterwards the link is
        `new`'s and unloading `old` leaves it alone. Cgroup and interface links only; raises
        AttachFailed, leaving the link on `old`, when it cannot be moved (then attach beside)."""
        ...

    # -- host-level targets (scope Node) ------------------------------------------------------

    def node_interfaces(self) -> list[str]:
        """The network interfaces of the agent's own network namespace: the host's."""
        ...

    def node_attachments(self, ref: ProgramRef) -> dict[str, Attachment]:
        """A scope-Node version's attachments, by target: NODE_TARGET or an interface name. An
        attachment whose interface is gone, or now has another ifindex, is not live."""
        ...

    def attach_node(self, ref: ProgramRef, target: str, attach: KernelAttach) -> Attachment:
        """Attaches a scope-Node version to its event (NODE_TARGET) or to a host interface, with no
        pod filter; raises AttachFailed."""
        ...

    def detach_node(self, ref: ProgramRef, target: str) -> None: ...

    # -- what the agent reads besides its pins --------------------------------------------------

    def probe_program_type(self, prog_type: int, expected_attach_type: int = 0) -> bool:
        """Whether this kernel loads a program of the type (feature probing); nothing stays."""
        ...

    def read_map(self, path: str) -> list[tuple[bytes, bytes]]:
        """Every (key, value) of a map pinned under the backend's root (map metrics); raises
        KernelError, MapNotReadable for a map it does not read back (per-CPU)."""
        ...
