"""One lock around every change the agent makes to the kernel, shared by the pass and the fast path.

The pass and the fast path attach through the same backend from different threads; each mutation
runs alone, so an attach never meets a half-done unload or link move. Reads go straight through:
the backend's own mutations leave the pins consistent between calls.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

from node_agent.kernel.attach_types import KernelAttach
from node_agent.kernel.backend import Attachment, KernelBackend, ProgramRef


class SerializedBackend:
    """A KernelBackend whose attach, detach, update and unload hold one lock. Loading (a compile)
    does not: it makes a new version's pins only, and must never hold up an attach."""

    def __init__(self, backend: KernelBackend) -> None:
        self.backend = backend
        self.lock = threading.RLock()

    def __getattr__(self, name: str) -> Any:  # reads: loaded, attachments, node_interfaces, ...
        return getattr(self.backend, name)

    def attach(
        self,
        ref: ProgramRef,
        pod_uid: str,
        cgroup_dir: Path,
        attach: KernelAttach,
        *,
        container_id: str = "",
    ) -> Attachment:
        with self.lock:
            return self.backend.attach(ref, pod_uid, cgroup_dir, attach, container_id=container_id)

    def detach(self, ref: ProgramRef, pod_uid: str) -> None:
        with self.lock:
            self.backend.detach(ref, pod_uid)

    def update(
        self, old: ProgramRef, new: ProgramRef, pod_uid: str, cgroup_dir: Path, attach: KernelAttach
    ) -> Attachment:
        with self.lock:
            return self.backend.update(old, new, pod_uid, cgroup_dir, attach)

    def unload(self, ref: ProgramRef) -> None:
        with self.lock:
            self.backend.unload(ref)

    def attach_node(self, ref: ProgramRef, target: str, attach: KernelAttach) -> Attachment:
        with self.lock:
            return self.backend.attach_node(ref, target, attach)

    def detach_node(self, ref: ProgramRef, target: str) -> None:
        with self.lock:
            self.backend.detach_node(ref, target)
