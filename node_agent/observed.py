"""The observed model: what bpfleet runs on this node, as the kernel (through the backend) said.

It is adopted from bpffs when the agent starts and read again from the kernel at every resync; in
between, the executor records each action that succeeded, so a pass costs no bpffs walk. What the
kernel changed on its own (a cgroup removed, its link gone defunct) is seen at the next resync; an
action that failed makes the next pass read the kernel again.
"""

from __future__ import annotations

from collections.abc import Callable

from node_agent.kernel.backend import Attachment, KernelBackend, LoadedProgram, ProgramRef


class Observed:
    def __init__(self, backend: KernelBackend) -> None:
        self.backend = backend
        self.loaded: dict[ProgramRef, LoadedProgram] = {}
        self._links: dict[ProgramRef, dict[str, Attachment]] = {}
        self._stale = True

    def refresh(self, full: bool) -> None:
        """Before a pass. `full`: read everything from the kernel again (start, resync, after a
        failed action); else keep the model, whose per-version links are read on first use."""
        if full or self._stale:
            self.loaded = self.backend.loaded()
            self._links = {}
            self._stale = False

    def stale(self) -> None:
        """The kernel may differ from the model (an action failed half way): read it next pass."""
        self._stale = True

    def attachments(self, ref: ProgramRef) -> dict[str, Attachment]:
        """The version's attachments by pod UID; a copy the caller may change."""
        if ref not in self._links:
            self._links[ref] = self.backend.attachments(ref)
        return dict(self._links[ref])

    def node_attachments(self, ref: ProgramRef) -> dict[str, Attachment]:
        # Read every pass: interfaces come and go without telling the agent, and there are few.
        return self.backend.node_attachments(ref)

    def node_interfaces(self) -> list[str]:
        return self.backend.node_interfaces()

    # -- what the executor did ------------------------------------------------------------------

    def built(self, program: LoadedProgram) -> None:
        self.loaded[program.ref] = program

    def attached(self, link: Attachment) -> None:
        if link.ref in self._links:
            self._links[link.ref][link.pod_uid] = link

    def detached(self, ref: ProgramRef, pod_uid: str) -> None:
        self._links.get(ref, {}).pop(pod_uid, None)

    def moved(self, old: ProgramRef, link: Attachment) -> None:
        self.detached(old, link.pod_uid)
        self.attached(link)

    def unloaded(self, ref: ProgramRef) -> None:
        self.loaded.pop(ref, None)
        self._links.pop(ref, None)


def every_pass() -> Callable[[], bool]:
    """A resync policy that reads the kernel before every pass."""
    return lambda: True


def every(seconds: float, clock: Callable[[], float]) -> Callable[[], bool]:
    """A resync policy that reads the kernel once `seconds` have passed since the last read."""
    last: list[float | None] = [None]

    def due() -> bool:
        now = clock()
        if last[0] is None or now - last[0] >= seconds:
            last[0] = now
            return True
        return False

    return due
