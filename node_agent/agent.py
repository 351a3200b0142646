"""The node agent: follows this node's EbpfNodeState, the EbpfProgramPlacements its Node's labels
match, and its pods; reconciles; reports status."""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from typing import Any

from bpfleet_api import conditions, names
from bpfleet_api.errors import ApiError
from bpfleet_api.informer import Informer, wait_synced
from bpfleet_api.objects import CoreObjects, CustomObjects
from bpfleet_api.rest import RestClient
from bpfleet_api.status_patch import patch_status
from node_agent.features import NodeFeatures
from node_agent.intake import Intake, VersionReader, parse_entries
from node_agent.metrics import AgentMetrics
from node_agent.model import NodeProgram, Pod, Trust
from node_agent.placements import merged, placed_entries
from node_agent.reconcile import ATTACHED, PassResult, Reconciler
from node_agent.reporting import Reporter
from node_agent.status_hold import StatusHold

log = logging.getLogger(__name__)

# While a selected pod has no cgroup yet, look again this often: kubelet is about to create it.
_WAITING_RECHECK = 0.2
# Failed attachments (a missing symbol, a refused attach) are retried this often, not in a tight loop.
_FAILED_RETRY = 5.0
# A version object an entry names could not be read: no watch says when it appears, so look again.
_VERSION_RETRY = 1.0
# Programs on host interfaces by pattern look for new and vanished interfaces this often.
_INTERFACE_RECHECK = 5.0
# How often the agent says it is alive (BpfleetNode status.lastHeartbeat).
HEARTBEAT_SECONDS = float(os.environ.get("BPFLEET_HEARTBEAT_SECONDS", "20"))
_DEBOUNCE = 0.02
# A wake this long after the last pass runs one at once: the first event of a burst is served
# without the debounce (a new program's spec, say), the rest of the burst lands in the next pass.
_QUIET = 1.0
# While this node has no EbpfNodeState, whether its Node object exists is asked again this often.
_NODE_RECHECK = 5.0


def _labels(node: dict[str, Any]) -> dict[str, str]:
    return dict(node["metadata"].get("labels") or {})


class Agent:
    def __init__(
        self,
        api: RestClient,
        node: str,
        reconciler: Reconciler,
        features: NodeFeatures | None = None,
        resync: float = 30.0,
        metrics: AgentMetrics | None = None,
        trust: Trust | None = None,
        heartbeat: float = HEARTBEAT_SECONDS,
    ) -> None:
        self.api, self.node, self.reconciler, self.resync = api, node, reconciler, resync
        self.heartbeat_seconds = heartbeat
        self.trust = trust or Trust()
        # Entries refused and states ignored: each is logged once, not every pass.
        self._logged: set[tuple[str, ...]] = set()
        self.versions = VersionReader(self._read_version, self.trust)
        self.reporter = Reporter()
        self._retry_versions = False
        # (resourceVersion the status was written over, the status): a pass before the watch
        # delivers that write would write it again.
        self._written: tuple[str, dict[str, Any]] | None = None
        self.hold = StatusHold()  # news of queued builds and of pods may wait a little (status_hold)
        self.metrics = metrics or AgentMetrics(reconciler.cgroups)
        self.features = features
        self.custom = CustomObjects(api)
        self.core = CoreObjects(api)
        self._wake = threading.Event()
        # A compile ended, or the node's state changed, since the last pass began: nothing of a
        # burst to wait for (the operator writes a node's spec once for many programs).
        self._at_once = threading.Event()
        self.stop_event = threading.Event()
        self._node_checked_at, self._node_missing = -_NODE_RECHECK, False
        # A compile that ends (built or failed) wakes a pass to serve it: passes never wait for one.
        reconciler.pool.on_done = self._compile_done
        # Exactly one object: this node's EbpfNodeState, named after it.
        self.programs: Informer[dict[str, Any]] = Informer(
            api,
            f"/apis/{names.GROUP}/{names.VERSION}/{names.NODE_STATE_PROGRAMS_PLURAL}",
            on_change=self._run_at_once,
            field_selector=f"metadata.name={node}",
        )
        # Every program's placement (few, and small), and this node's Node for the labels they match.
        self.placements: Informer[dict[str, Any]] = Informer(
            api,
            f"/apis/{names.GROUP}/{names.VERSION}/{names.PLACEMENT_PLURAL}",
            on_change=self._run_at_once,
        )
        # Kept reduced to its labels, and a pass only when they change: not at every kubelet update.
        self.node_labels: Informer[dict[str, str]] = Informer(
            api,
            "/api/v1/nodes",
            _labels,
            listener=lambda *_: self._run_at_once(),
            field_selector=f"metadata.name={node}",
        )
        self.pods: Informer[dict[str, Any]] = Informer(
            api, "/api/v1/pods", on_change=self._wake.set, field_selector=f"spec.nodeName={node}"
        )
        # Called after each pass with what it saw (the fast path registers pods' programs here).
        self.pass_listeners: list[Callable[[list[NodeProgram], list[Pod], PassResult], None]] = []

    def run(self) -> None:
        log.info("agent starting", extra={"node": self.node, "systemNamespace": self.trust.system_namespace})
        self._publish(self.features)
        # Its own thread: a pass stuck in a long compile must not make the operator see a silent node.
        beat = threading.Thread(target=self._heartbeat_loop, name="heartbeat", daemon=True)
        beat.start()
        try:
            self._run_passes()
        finally:
            self.stop_event.set()
            beat.join()

    def _run_passes(self) -> None:
        for informer in self._informers():
            informer.start()
        # Reconciling before every cache is full would detach what runs: an empty cache is not
        # "no programs", it is "not known yet".
        while not wait_synced(self._informers(), self.stop_event):
            if self.stop_event.is_set():
                return
            log.warning(
                "waiting for the API server to list programs, placements, the node and pods",
                extra={"node": self.node},
            )
        log.info("caches synced, reconciling", extra={"node": self.node})
        timeout = 0.0
        first_pass = True
        last_pass = time.monotonic()  # the caches' sync is a burst of its own
        while not self.stop_event.is_set():
            self._sleep_until_woken(timeout)
            if self.stop_event.is_set():
                break
            # A finished compile attaches (and is Ready) now, a new spec is served now; pods' events
            # come in bursts.
            if not self._at_once.is_set() and time.monotonic() - last_pass < _QUIET:
                time.sleep(_DEBOUNCE)  # let a burst of watch events land in one pass
            self._at_once.clear()
            self._wake.clear()
            try:
                last_pass = time.monotonic()
                result = self.reconcile_once()
                timeout = self._next_pass_in(result)
                if first_pass:
                    first_pass = False
                    self._log_first_pass(result)
            except Exception:
                log.exception("reconcile pass failed", extra={"node": self.node})
                timeout = 2.0
        for informer in self._informers():
            informer.stop()

    def _informers(self) -> list[Informer[Any]]:
        return [self.programs, self.placements, self.node_labels, self.pods]

    def _publish(self, features: NodeFeatures | None) -> None:
        """Creates or updates this node's BpfleetNode: what its kernel can run, and that this agent
        reads placements (tied to this start: an older agent that replaces it rewrites
        agentStartedAt, and the operator then names every program in the node's spec again)."""
        found = features.as_status() if features is not None else {}
        if found:
            log.info("kernel features", extra={"node": self.node, **found})
        now = conditions.now()
        status = {**found, "agentStartedAt": now, "readsPlacementsSince": now, "lastHeartbeat": now}
        body = {
            "apiVersion": names.API_VERSION,
            "kind": names.NODE_STATE_KIND,
            "metadata": {"name": self.node, "ownerReferences": self._node_owner()},
        }
        try:
            self.custom.create_cluster_custom_object(
                names.GROUP, names.VERSION, names.NODE_STATE_PLURAL, body
            )
        except ApiError as e:
            if e.status != 409:
                log.warning("could not publish kernel features", extra={"error": str(e.reason)})
                return
        except Exception as e:  # the API server unreachable: carry on, the informers retry
            log.warning("could not publish kernel features", extra={"error": str(e)})
            return
        try:
            self._patch_node_state(status)
        except Exception as e:
            log.warning("could not publish kernel features", extra={"error": str(e)})

    def _patch_node_state(self, status: dict[str, Any]) -> bool:
        """Merges into this node's BpfleetNode status; False when the object does not exist."""
        return patch_status(self.custom, names.NODE_STATE_PLURAL, self.node, status)

    def _node_gone(self) -> bool:
        """Whether the API server says this node's Node object does not exist (asked at most every
        few seconds; any other answer, or none, is not "gone")."""
        now = time.monotonic()
        if now - self._node_checked_at < _NODE_RECHECK:
            return self._node_missing
        self._node_checked_at = now
        try:
            self.core.read_node(self.node)
            self._node_missing = False
        except ApiError as e:
            self._node_missing = e.status == 404
        except Exception:  # the API server unreachable: not known
            self._node_missing = False
        return self._node_missing

    def _node_owner(self) -> list[dict[str, str]]:
        """The Node as owner, so that its BpfleetNode is garbage-collected with it."""
        try:
            node = self.core.read_node(self.node)
        except Exception as e:  # forbidden, missing, or the API server unreachable: no owner then
            log.warning("cannot read this node's Node object", extra={"node": self.node, "error": str(e)})
            return []
        return [{"apiVersion": "v1", "kind": "Node", "name": self.node, "uid": node["metadata"]["uid"]}]

    def _log_first_pass(self, result: PassResult) -> None:
        # After a restart this is the line that says the data plane was adopted, not rebuilt.
        attached = sum(p.state == ATTACHED for r in result.reports for p in r.pods)
        log.info(
            "initial reconcile done",
            extra={"node": self.node, "programs": len(result.reports), "podsAttached": attached},
        )

    def _next_pass_in(self, result: PassResult) -> float:
        if result.waiting:
            return _WAITING_RECHECK
        soon = [self.resync]
        if (held := self.hold.release_in()) is not None:  # a held status is written then
            soon.append(held)
        if self._retry_versions:
            soon.append(_VERSION_RETRY)
        if result.failed:
            soon.append(_FAILED_RETRY)
        if result.follows_interfaces:
            soon.append(_INTERFACE_RECHECK)
        return min(soon)

    def _heartbeat_loop(self) -> None:
        while not self.stop_event.is_set():
            self._heartbeat()
            self.stop_event.wait(self.heartbeat_seconds)

    def _heartbeat(self) -> None:
        """Tells the operator this agent is alive."""
        try:
            if not self._patch_node_state({"lastHeartbeat": conditions.now()}):
                self._publish(self.features)  # deleted (with its Node, say): make it again
        except Exception as e:  # the next beat tries again
            log.warning("heartbeat failed", extra={"node": self.node, "error": str(e)})

    def _sleep_until_woken(self, timeout: float) -> None:
        # Waits in short slices: Python runs signal handlers in the main thread only between
        # bytecodes, so a SIGTERM delivered to another thread would otherwise wait for the timeout.
        deadline = time.monotonic() + timeout
        while not self._wake.is_set() and (left := deadline - time.monotonic()) > 0:
            self._wake.wait(min(left, 0.5))

    def stop(self) -> None:
        self.stop_event.set()
        self._wake.set()

    def _compile_done(self) -> None:
        self._run_at_once()

    def _run_at_once(self) -> None:
        """Runs a pass without the debounce, from any thread."""
        self._at_once.set()
        self._wake.set()

    def wake(self) -> None:
        """Runs a pass soon (after the debounce), from any thread."""
        self._wake.set()

    def reconcile_once(self) -> PassResult:
        state = self._node_state()
        labels = self.node_labels.get(self.node)
        if state is None or labels is None:
            self._retry_versions = False
            if self._node_gone():
                # Not "not known yet": this node left the cluster (deleted while the agent was down,
                # say), so nothing may run here any more, whoever it belonged to.
                self._log_once("this node's Node object is gone: unloading everything", ("node gone",))
                return self.reconciler.run([], [Pod.from_object(o) for o in self.pods.objects()])
            # No spec yet, or no labels to match placements with, is "not known yet", not "run
            # nothing": the operator makes the spec for every node with an agent, and the Node's
            # watch is behind. What runs keeps running until they say otherwise.
            return PassResult([], waiting=False)
        entries, problems = parse_entries(state)
        placed, refused = placed_entries(self.placements.objects(), labels, self.trust)
        for problem in problems:
            self._log_once("refusing an entry it cannot name", ("unnamed", problem), error=problem)
        for problem in refused:
            self._log_once("refusing a placement", ("placement", problem), error=problem)
        intake = self.versions.read(merged(placed, entries))
        self._log_refusals(intake)
        self._retry_versions = intake.retry
        pods = [Pod.from_object(o) for o in self.pods.objects()]
        started = time.monotonic()
        result = self.reconciler.run(intake.programs, pods, intake.held)
        log.debug("pass applied", extra={"node": self.node, "seconds": round(time.monotonic() - started, 4)})
        self.metrics.pass_done(result, intake.objects, pods, time.monotonic() - started)
        for listener in self.pass_listeners:
            try:
                listener(intake.programs, pods, result)
            except Exception:  # never the end of the pass: the fast path is an optimisation
                log.exception("pass listener failed", extra={"node": self.node})
        status = self.reporter.status(state, intake, result, self._running)
        self._write_status(state, status)
        return result

    def _node_state(self) -> dict[str, Any] | None:
        """This node's EbpfNodeState, or None while there is none (or one addressed elsewhere)."""
        for state in self.programs.objects():
            meta, spec = state.get("metadata") or {}, state.get("spec") or {}
            if meta.get("name") != self.node:
                continue
            if spec.get("nodeName") not in (None, self.node):
                key = ("ignored", str(meta.get("resourceVersion")))
                self._log_once(
                    "ignoring a node state addressed to another node", key, nodeName=spec.get("nodeName")
                )
                return None
            return state
        return None

    def _read_version(self, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            found: dict[str, Any] = self.custom.get_namespaced_custom_object(
                names.GROUP, names.VERSION, namespace, names.VERSION_PLURAL, name
            )
        except ApiError as e:
            if e.status == 404:
                return None
            raise
        return found

    def _running(self) -> set[tuple[str, str]]:
        """Programs of which something is loaded, or is being compiled: a compile still running for
        an entry removed from spec pins its version when it ends, and the pass then unloads it."""
        loaded = {ref.program for ref in self.reconciler.backend.loaded()}
        return loaded | {ref.program for ref in self.reconciler.pool.building()}

    def _log_refusals(self, intake: Intake) -> None:
        for key, refusal in intake.refused.items():
            entry = intake.entries[key]
            self._log_once(
                "refusing an entry",
                ("refused", key.kind, key.namespace, key.name, entry.version, refusal.reason),
                entry=f"{key.kind}/{key.namespace}/{key.name}",
                version=entry.version,
                error=refusal.message,
            )
        # Forget what is no longer refused, so that a refusal that comes back is logged again.
        current = {
            ("refused", k.kind, k.namespace, k.name, intake.entries[k].version, r.reason)
            for k, r in intake.refused.items()
        }
        self._logged = {k for k in self._logged if k[0] != "refused" or k in current}

    def _log_once(self, message: str, key: tuple[str, ...], **extra: Any) -> None:
        if key not in self._logged:
            self._logged.add(key)
            log.warning(message, extra={"node": self.node, **extra})

    def _write_status(self, state: dict[str, Any], status: dict[str, Any]) -> None:
        """One write per pass at most, and none when nothing changed: neither against the cache nor,
        while the cache has not seen it yet, against the last write."""
        seen = str(state["metadata"].get("resourceVersion"))
        if (state.get("status") or {}) == status or self._written == (seen, status):
            self.hold.settled()
            return
        if self.hold.holds(self._written[1] if self._written else state.get("status") or {}, status):
            return
        patch_status(self.custom, names.NODE_STATE_PROGRAMS_PLURAL, self.node, status)
        self._written = (seen, status)
        self.hold.written()
        log.debug("status written", extra={"node": self.node, "programs": len(status.get("programs", []))})
