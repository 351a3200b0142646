"""The fast path: attaches a pod's programs the moment kubelet makes its cgroup, without a pass.

The pass registers (after each run) what serves every pod it saw, Pending ones included
(pod_registry). When the cgroup watch reports a pod cgroup, the fast path attaches what it can at
once through the same backend as the pass (one lock around mutations, serialized_backend), then
wakes the pass, which finds the links and reports Attached. Tc and Xdp need a process in the pod's
network namespace: they are tried again whenever a container cgroup appears or the pod's
cgroup.events changes (a first process joined). Uprobes and container-level attachments are the
pass's: the fast path only wakes it when a container appears.

`wait_ready` is what the container-start hook asks (hook_server): it answers once every program
selecting the pod that can be attached before the container runs is attached, or at the deadline.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from node_agent.errors import AgentError
from node_agent.kernel.backend import Attachment, KernelBackend
from node_agent.model import NodeProgram, Pod
from node_agent.pod_registry import (
    AT_CGROUP,
    AT_NETWORK,
    PodEntry,
    Serving,
    entries_from_pass,
    entry_for,
    merged,
    serving_from_pass,
)
from node_agent.reconcile import CgroupResolver, PassResult
from node_agent.serialized_backend import SerializedBackend

log = logging.getLogger(__name__)

# A hook waiting on a pod retries what failed (a netns not there yet) at most this often.
_RETRY_EVERY = 0.05


@dataclass
class Readiness:
    """The answer to "may this pod's container start?"."""

    ready: bool
    known: bool  # whether a pass has seen the pod at all
    missing: list[str] = field(default_factory=list)
    waited: float = 0.0


class FastPath:
    def __init__(self, backend: KernelBackend, cgroups: CgroupResolver, wake: Callable[[], None]) -> None:
        # The pass's lock, shared: a pod's programs are attached in one go, not between the
        # pass's own mutations one by one.
        self.backend = backend if isinstance(backend, SerializedBackend) else SerializedBackend(backend)
        self.cgroups, self.wake = cgroups, wake
        # Told of every link made here (the pass's observed model): a pod that goes away before
        # the next pass then has its links detached by it, not left until a resync.
        self.on_attached: Callable[[Attachment], None] = lambda _link: None
        self._entries: dict[str, PodEntry] = {}
        self._changed = threading.Condition()
        # What each program served at the last pass, and the pod watch's cache: a pod the watch
        # has shown but no pass has registered yet gets its entry from these, without a pass.
        self._serving: list[Serving] | None = None
        self.pod_lookup: Callable[[str], Pod | None] | None = None

    # -- from the pass ------------------------------------------------------------------------

    def registered(self, programs: Iterable[NodeProgram], pods: Iterable[Pod], result: PassResult) -> None:
        """After each pass: what serves each pod now. A pod whose cgroup appeared while the pass
        ran is attached here, not one pass later."""
        programs, pods = list(programs), list(pods)
        with self._changed:
            self._serving = serving_from_pass(programs, result)
            self._entries = merged(self._entries, entries_from_pass(programs, pods, result))
            # Pending pods only: a running pod's failed attachment is the pass's to retry, at its pace.
            incomplete = [e for e in self._entries.values() if e.pending and e.todo((AT_CGROUP, AT_NETWORK))]
            self._changed.notify_all()
        for entry in incomplete:
            cgroup = self.cgroups.find(entry.uid, entry.qos_class)
            if cgroup is not None:
                self._attach(entry.uid, cgroup, (AT_CGROUP, AT_NETWORK))

    def entry(self, uid: str) -> PodEntry | None:
        with self._changed:
            entry = self._entries.get(uid)
            serving = self._serving
        if entry is not None or serving is None or self.pod_lookup is None:
            return entry  # before a first pass nothing is known: no entry, rather than an empty one
        pod = self.pod_lookup(uid)
        if pod is None:
            return None
        new = entry_for(pod, serving)
        with self._changed:
            entry = self._entries.setdefault(uid, new)  # a pass may have registered it meanwhile
            self._changed.notify_all()
        return entry

    # -- from the cgroup watch (its thread) ---------------------------------------------------

    def pod_cgroup(self, uid: str, cgroup: Path) -> None:
        # Tc/Xdp are tried too: a runtime may have put a process in the pod before we heard of it.
        self._attach(uid, cgroup, (AT_CGROUP, AT_NETWORK))

    def container_cgroup(self, uid: str, _container_id: str, _cgroup: Path) -> None:
        pod_cgroup = _cgroup.parent
        self._attach(uid, pod_cgroup, (AT_CGROUP, AT_NETWORK))
        entry = self.entry(uid)
        if entry is not None and any(w.when not in (AT_CGROUP, AT_NETWORK) for w in entry.wanted.values()):
            self.wake()  # uprobes and container-level attachments: the pass's to do

    def populated(self, uid: str, cgroup: Path) -> None:
        entry = self.entry(uid)
        if entry is not None and entry.todo((AT_NETWORK,)):
            self._attach(uid, cgroup, (AT_NETWORK,))

    # -- from the hook ------------------------------------------------------------------------

    def wait_ready(self, uid: str, timeout: float) -> Readiness:
        """Waits until every program selecting the pod that can run before its container starts is
        attached; a pod no pass has seen yet is waited for too (its watch event may be behind)."""
        start = time.monotonic()
        deadline = start + timeout
        tried = 0.0
        if self.entry(uid) is None:
            self.wake()  # once: the pass registers it as soon as the pod watch has it
        while True:
            entry = self.entry(uid)
            if entry is not None and not entry.ready() and time.monotonic() - tried >= _RETRY_EVERY:
                tried = time.monotonic()
                cgroup = self.cgroups.find(uid, entry.qos_class)
                if cgroup is not None:
                    self._attach(uid, cgroup, (AT_CGROUP, AT_NETWORK))
            entry = self.entry(uid)
            with self._changed:
                now = time.monotonic()
                if entry is not None and entry.ready():
                    return Readiness(True, True, waited=now - start)
                if now >= deadline:
                    missing = entry.missing() if entry is not None else ["the pod (not seen yet)"]
                    return Readiness(False, entry is not None, missing, now - start)
                self._changed.wait(min(deadline - now, _RETRY_EVERY))

    # -- attaching ----------------------------------------------------------------------------

    def _attach(self, uid: str, cgroup: Path, moments: tuple[str, ...]) -> None:
        entry = self.entry(uid)
        if entry is None:
            self.wake()  # a pod the pass has not registered yet: let it look now
            return
        done = []
        started = time.monotonic()
        with self.backend.lock:
            for wanted in entry.todo(moments):
                try:
                    self.on_attached(self.backend.attach(wanted.ref, uid, cgroup, wanted.attach))
                except (AgentError, OSError) as e:
                    # Not fatal: the pass retries and reports it (a netns not there yet, say).
                    log.debug("fast path could not attach yet", extra={"pod": uid, "error": str(e)})
                    continue
                done.append(wanted.ref)
            if not done:
                return
            # Recorded under the backend's lock: whoever sees the links sees them recorded too.
            with self._changed:
                current = self._entries.get(uid)
                if current is not None:
                    current.attached.update(ref for ref in done if ref in current.wanted)
                self._changed.notify_all()
        log.info(
            "attached on cgroup creation",
            extra={
                "pod": f"{entry.namespace}/{entry.name}",
                "programs": len(done),
                "seconds": round(time.monotonic() - started, 4),
                "cgroup": str(cgroup),
            },
        )
        self.wake()  # the pass finds the links and reports Attached
