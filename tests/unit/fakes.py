"""An in-memory KernelBackend that behaves like the real one, for tests of the pure logic."""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from pathlib import Path

from node_agent import errors
from node_agent.kernel.attach_types import KernelAttach
from node_agent.kernel.backend import Attachment, LoadedProgram, ProgramBuild, ProgramRef


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
    _ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1))

    def loaded(self) -> dict[ProgramRef, LoadedProgram]:
        return dict(self.programs)

    def load(self, ref: ProgramRef, build: ProgramBuild) -> LoadedProgram:
        self.loads.append(ref)
        if build.source in self.broken_sources:
            raise self.broken_sources[build.source]
        program = LoadedProgram(ref, next(self._ids), f"/fake/{ref.namespace}/{ref.name}/{ref.version}")
        self.programs[ref] = program
        return program

    def unload(self, ref: ProgramRef) -> None:
        self.programs.pop(ref, None)
        self.links.pop(ref, None)

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

    def detach(self, ref: ProgramRef, pod_uid: str) -> None:
        self.links.get(ref, {}).pop(pod_uid, None)

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
