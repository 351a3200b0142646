"""An in-memory KernelBackend that behaves like the real one, for tests of the pure logic."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from bpfleet_api.kubeconfig import Endpoint
from bpfleet_api.rest import RestClient
from node_agent import errors
from node_agent.kernel.attach_types import KernelAttach
from node_agent.kernel.backend import NODE_TARGET, Attachment, LoadedProgram, ProgramBuild, ProgramRef


@dataclass
class FakeBackend:
    loads: list[ProgramRef] = field(default_factory=list)
    programs: dict[ProgramRef, LoadedProgram] = field(default_factory=dict)
    links: dict[ProgramRef, dict[str, Attachment]] = field(default_factory=dict)
    # Source text -> error to raise when it is loaded.
    broken_sources: dict[str, errors.ProgramBuildError] = field(default_factory=dict)
    refuse_attach: set[str] = field(default_factory=set)  # pod UIDs
    # Pod UID -> the container id it was attached with (uprobes name a container).
    containers: dict[str, str] = field(default_factory=dict)
    # The host's interfaces (name -> ifindex), and scope-Node links by version and target.
    interfaces: dict[str, int] = field(default_factory=lambda: {"lo": 1, "eth0": 2})
    node_links: dict[ProgramRef, dict[str, Attachment]] = field(default_factory=dict)
    refuse_targets: set[str] = field(default_factory=set)
    # Failures to inject: detaches of these pod UIDs or targets, unloads of these versions.
    refuse_detach: set[str] = field(default_factory=set)
    refuse_unload: set[ProgramRef] = field(default_factory=set)
    refuse_update: set[str] = field(default_factory=set)  # pod UIDs
    # (old version, new version, pod UID) of every link moved in place.
    updates: list[tuple[ProgramRef, ProgramRef, str]] = field(default_factory=list)
    # Program types this kernel does not load, and map contents by pin path.
    missing_program_types: set[int] = field(default_factory=set)
    maps: dict[str, list[tuple[bytes, bytes]]] = field(default_factory=dict)
    # The previous version each load was given (whose maps the new one takes over).
    previous: dict[ProgramRef, ProgramRef | None] = field(default_factory=dict)
    _ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1))

    def loaded(self) -> dict[ProgramRef, LoadedProgram]:
        return dict(self.programs)

    def load(self, ref: ProgramRef, build: ProgramBuild, previous: ProgramRef | None = None) -> LoadedProgram:
        self.loads.append(ref)
        self.previous[ref] = previous
        if build.source in self.broken_sources:
            raise self.broken_sources[build.source]
        program = LoadedProgram(ref, next(self._ids), f"/fake/{ref.namespace}/{ref.name}/{ref.version}")
        self.programs[ref] = program
        return program

    def unload(self, ref: ProgramRef) -> None:
        if ref in self.refuse_unload:
            raise errors.KernelError(f"unpinning {ref.version}: Device or resource busy", 16)
        self.programs.pop(ref, None)
        self.links.pop(ref, None)
        self.node_links.pop(ref, None)

    def attachments(self, ref: ProgramRef) -> dict[str, Attachment]:
        return dict(self.links.get(ref, {}))

    def attach(
        self,
        ref: ProgramRef,
        pod_uid: str,
        cgroup_dir: Path,
        attach: KernelAttach,
        *,
        container_id: str = "",
    ) -> Attachment:
        self.containers[pod_uid] = container_id
        if pod_uid in self.refuse_attach:
            raise errors.AttachFailed(f"attaching to {cgroup_dir}: Operation not permitted")
        link = Attachment(ref, pod_uid, next(self._ids), target_id=hash(str(cgroup_dir)) & 0xFFFF or 1)
        self.links.setdefault(ref, {})[pod_uid] = link
        return link

    def update(
        self, old: ProgramRef, new: ProgramRef, pod_uid: str, cgroup_dir: Path, attach: KernelAttach
    ) -> Attachment:
        link = self.links.get(old, {}).get(pod_uid)
        if pod_uid in self.refuse_update or link is None or new not in self.programs:
            raise errors.AttachFailed(f"updating the link {pod_uid} in place: Invalid argument")
        # Like BPF_LINK_UPDATE: the same link, now the new version's; never two, never none.
        moved = Attachment(new, pod_uid, link.link_id, link.target_id)
        del self.links[old][pod_uid]
        self.links.setdefault(new, {})[pod_uid] = moved
        self.updates.append((old, new, pod_uid))
        return moved

    def detach(self, ref: ProgramRef, pod_uid: str) -> None:
        if pod_uid in self.refuse_detach:
            raise errors.KernelError(f"detaching {pod_uid}: Operation not permitted", 1)
        self.links.get(ref, {}).pop(pod_uid, None)

    def node_interfaces(self) -> list[str]:
        return sorted(self.interfaces)

    def node_attachments(self, ref: ProgramRef) -> dict[str, Attachment]:
        found = {}
        for target, link in self.node_links.get(ref, {}).items():
            # Like the kernel: a link whose interface went away (or is another now) is dead.
            live = target == NODE_TARGET or self.interfaces.get(target) == link.target_id
            found[target] = link if live else Attachment(ref, target, link.link_id, 0)
        return found

    def attach_node(self, ref: ProgramRef, target: str, attach: KernelAttach) -> Attachment:
        if target in self.refuse_targets:
            raise errors.AttachFailed(f"attaching to {target}: Operation not supported")
        target_id = 1 if target == NODE_TARGET else self.interfaces[target]
        link = Attachment(ref, target, next(self._ids), target_id)
        self.node_links.setdefault(ref, {})[target] = link
        return link

    def detach_node(self, ref: ProgramRef, target: str) -> None:
        if target in self.refuse_detach:
            raise errors.KernelError(f"detaching {target}: Operation not permitted", 1)
        self.node_links.get(ref, {}).pop(target, None)

    def probe_program_type(self, prog_type: int, expected_attach_type: int = 0) -> bool:
        return prog_type not in self.missing_program_types

    def read_map(self, path: str) -> list[tuple[bytes, bytes]]:
        if path not in self.maps:
            raise errors.KernelError(f"bpf cmd 7: No such file or directory ({path})", errno=2)
        return self.maps[path]

    def cgroup_removed(self, pod_uid: str) -> None:
        """What the kernel does when a pod's cgroup is deleted: its links go defunct."""
        for links in self.links.values():
            if pod_uid in links:
                old = links[pod_uid]
                links[pod_uid] = Attachment(old.ref, pod_uid, old.link_id, 0)


@dataclass
class FakeCgroups:
    present: set[str] = field(default_factory=set)
    kubelet_root: Path = Path("/cgroup")

    def find(self, uid: str, qos_class: str | None) -> Path | None:
        return Path(f"/cgroup/pod{uid}") if uid in self.present else None


@dataclass
class ManualStart:
    """A compile pool's starter that runs nothing until the test says: builds "take" as long as the
    test wants, and the pass that submitted them goes on without them."""

    jobs: list[Callable[[], None]] = field(default_factory=list)

    def __call__(self, job: Callable[[], None]) -> None:
        self.jobs.append(job)

    def finish_one(self) -> None:
        self.jobs.pop(0)()

    def finish_all(self) -> None:
        while self.jobs:
            self.finish_one()


def offline_api() -> RestClient:
    """A client of no server: for agents whose informers and API calls tests replace."""
    return RestClient(Endpoint("http://127.0.0.1:9", None))
