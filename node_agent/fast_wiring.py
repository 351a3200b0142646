"""Puts the fast path together around a running agent: registrations after each pass, the cgroup
watch on kubelet's tree, and the container-start hook's socket."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from pathlib import Path

from node_agent.agent import Agent
from node_agent.cgroup_watch import CgroupListener, CgroupWatch
from node_agent.fast_path import FastPath
from node_agent.hook_server import HookServer
from node_agent.model import Pod
from node_agent.reconcile import Reconciler

log = logging.getLogger(__name__)

# A thread woken by inotify waits for the GIL up to the switch interval (5 ms by default) while the
# pass computes: a shorter one lets the fast path in within a fraction of a millisecond.
_SWITCH_INTERVAL = 0.0005
# And for a CPU: on a busy node (kubelet, the runtime, the pods themselves, the agent's own pass),
# the scheduler's slices would otherwise come between a pod's cgroup and its programs. Measured on
# two cores with the API server beside it: cgroup -> 50 programs attached, p99 ~25 -> ~15 ms. The
# thread's work is bounded (an attach per program per new pod) and it sleeps in between.
FAST_PATH_NICE = -10


def fast_path_for(reconciler: Reconciler, wake: Callable[[], None]) -> FastPath:
    """The fast path of a reconciler: its backend (and lock), its cgroups, its observed model."""
    fast = FastPath(reconciler.backend, reconciler.cgroups, wake)
    fast.on_attached = reconciler.observed.attached
    return fast


class FastPathRuntime:
    def __init__(self, agent: Agent, reconciler: Reconciler, hook_socket: Path | None, nice: int = 0) -> None:
        # The reconciler's backend is the serialized one: the fast path shares its lock.
        self.fast_path = fast_path_for(reconciler, agent.wake)
        agent.pass_listeners.append(self.fast_path.registered)
        self.fast_path.pod_lookup = lambda uid: _watched_pod(agent, uid)
        listener = CgroupListener(
            self.fast_path.pod_cgroup, self.fast_path.container_cgroup, self.fast_path.populated
        )
        self.watch: CgroupWatch | None = CgroupWatch(reconciler.cgroups.kubelet_root, listener, nice)
        self.server: HookServer | None = None
        if hook_socket is not None:
            try:
                self.server = HookServer(hook_socket, self.fast_path)
            except OSError as e:  # no writable /run, say: hooks then fail open, the rest works
                log.warning(
                    "no container-start hook socket", extra={"socket": str(hook_socket), "error": str(e)}
                )

    def start(self) -> None:
        sys.setswitchinterval(_SWITCH_INTERVAL)
        if self.watch is not None:
            try:
                self.watch.start()
            except OSError as e:  # no inotify, or no kubelet root: the pass still attaches
                log.warning("cgroup watch unavailable; pods wait for a pass", extra={"error": str(e)})
                self.watch = None
        if self.server is not None:
            self.server.start()

    def stop(self) -> None:
        if self.watch is not None:
            self.watch.stop()
        if self.server is not None:
            self.server.stop()


def _watched_pod(agent: Agent, uid: str) -> Pod | None:
    """The pod as the agent's pod watch has it now, if it has it."""
    for obj in agent.pods.objects():
        if obj["metadata"].get("uid") == uid:
            return Pod.from_object(obj)
    return None
