"""The node agent: follows this node's EbpfNodePrograms and pods, reconciles, reports status."""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from typing import Any

from kubernetes.client import ApiClient, CoreV1Api, CustomObjectsApi
from kubernetes.client.exceptions import ApiException

from bpfleet_api import conditions, names, patching, reasons
from node_agent.errors import InvalidSpec, TrustViolation
from node_agent.features import NodeFeatures
from node_agent.metrics import AgentMetrics
from node_agent.model import NodeProgram, Pod, Trust, addressed_to, held_program
from node_agent.reconcile import ATTACHED, PassResult, Reconciler
from node_agent.status import node_program_status
from node_agent.watch import Informer, wait_synced

log = logging.getLogger(__name__)

# While a selected pod has no cgroup yet, look again this often: kubelet is about to create it.
_WAITING_RECHECK = 0.2
# Failed attachments (a missing symbol, a refused attach) are retried this often, not in a tight loop.
_FAILED_RETRY = 5.0
# Programs on host interfaces by pattern look for new and vanished interfaces this often.
_INTERFACE_RECHECK = 5.0
# How often the agent says it is alive (BpfleetNode status.lastHeartbeat).
HEARTBEAT_SECONDS = float(os.environ.get("BPFLEET_HEARTBEAT_SECONDS", "20"))
_DEBOUNCE = 0.02


class Agent:
    def __init__(
        self,
        api: ApiClient,
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
        # Objects refused or ignored, by resourceVersion: each is logged once, not every pass.
        self._logged: set[tuple[str, ...]] = set()
        self.metrics = metrics or AgentMetrics(reconciler.cgroups)
        self.features = features
        self.custom = CustomObjectsApi(api)
        self._wake = threading.Event()
        self.stop_event = threading.Event()
        # A compile that ends (built or failed) wakes a pass to serve it: passes never wait for one.
        reconciler.pool.on_done = self._wake.set
        self.programs = Informer(
            api,
            f"/apis/{names.GROUP}/{names.VERSION}/{names.NODE_PROGRAM_PLURAL}",
            self._wake.set,
            label_selector=f"{names.NODE_LABEL}={names.label_value(node)}",
        )
        self.pods = Informer(api, "/api/v1/pods", self._wake.set, field_selector=f"spec.nodeName={node}")
        # Called after each pass with what it saw (the fast path registers pods' programs here).
        self.pass_listeners: list[Callable[[list[NodeProgram], list[Pod], PassResult], None]] = []

    def run(self) -> None:
        log.info("agent starting", extra={"node": self.node, "systemNamespace": self.trust.system_namespace})
        if self.features is not None:
            self._publish_features(self.features)
        # Its own thread: a pass stuck in a long compile must not make the operator see a silent node.
        beat = threading.Thread(target=self._heartbeat_loop, name="heartbeat", daemon=True)
        beat.start()
        try:
            self._run_passes()
        finally:
            self.stop_event.set()
            beat.join()

    def _run_passes(self) -> None:
        for informer in (self.programs, self.pods):
            informer.start()
        # Reconciling before both caches are full would detach what runs: an empty cache is not
        # "no programs", it is "not known yet".
        while not wait_synced([self.programs, self.pods], self.stop_event):
            if self.stop_event.is_set():
                return
            log.warning("waiting for the API server to list programs and pods", extra={"node": self.node})
        log.info("caches synced, reconciling", extra={"node": self.node})
        timeout = 0.0
        first_pass = True
        while not self.stop_event.is_set():
            self._sleep_until_woken(timeout)
            if self.stop_event.is_set():
                break
            time.sleep(_DEBOUNCE)  # let a burst of watch events land in one pass
            self._wake.clear()
            try:
                result = self.reconcile_once()
                timeout = self._next_pass_in(result)
                if first_pass:
                    first_pass = False
                    self._log_first_pass(result)
            except Exception:
                log.exception("reconcile pass failed", extra={"node": self.node})
                timeout = 2.0
        for informer in (self.programs, self.pods):
            informer.stop()

    def _publish_features(self, features: NodeFeatures) -> None:
        """Creates or updates this node's BpfleetNode with what its kernel can run."""
        log.info("kernel features", extra={"node": self.node, **features.as_status()})
        status = {
            **features.as_status(),
            "agentStartedAt": conditions.now(),
            "lastHeartbeat": conditions.now(),
        }
        body = {
            "apiVersion": names.API_VERSION,
            "kind": names.NODE_STATE_KIND,
            "metadata": {"name": self.node, "ownerReferences": self._node_owner()},
        }
        try:
            self.custom.create_cluster_custom_object(
                names.GROUP, names.VERSION, names.NODE_STATE_PLURAL, body
            )
        except ApiException as e:
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
        return patching.merge_patch(
            self.custom, names.NODE_STATE_PLURAL, None, self.node, {"status": status}, status=True
        )

    def _node_owner(self) -> list[dict[str, str]]:
        """The Node as owner, so that its BpfleetNode is garbage-collected with it."""
        try:
            node = CoreV1Api(self.api).read_node(self.node)
        except Exception as e:  # forbidden, missing, or the API server unreachable: no owner then
            log.warning("cannot read this node's Node object", extra={"node": self.node, "error": str(e)})
            return []
        return [{"apiVersion": "v1", "kind": "Node", "name": self.node, "uid": node.metadata.uid}]

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
            if not self._patch_node_state({"lastHeartbeat": conditions.now()}) and self.features is not None:
                self._publish_features(self.features)  # deleted (with its Node, say): make it again
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

    def wake(self) -> None:
        """Runs a pass soon (after the debounce), from any thread."""
        self._wake.set()

    def reconcile_once(self) -> PassResult:
        listed = self.programs.objects()
        self._logged &= {_log_key(o, why) for o in listed for why in ("ignored", "refused")}
        objects = {
            (o["metadata"]["namespace"], o["metadata"]["name"]): o for o in listed if self._addressed_here(o)
        }
        programs = []
        refused = []
        held: set[tuple[str, str]] = set()
        for obj in objects.values():
            try:
                programs.append(NodeProgram.from_object(obj, self.trust))
            except (AttributeError, KeyError, TypeError, ValueError, InvalidSpec) as e:
                refused.append(obj)
                self._refuse(obj, e)
                # Unreadable is not "gone": what runs of it keeps running, unless it is being deleted
                # or breaks a trust rule.
                keep = not isinstance(e, TrustViolation) and not obj["metadata"].get("deletionTimestamp")
                if keep and (key := held_program(obj, self.trust)):
                    held.add(key)
        pods = [Pod.from_object(o) for o in self.pods.objects()]
        for program in programs:
            if not program.deleting and names.AGENT_FINALIZER not in program.finalizers:
                self._add_finalizer(objects[(program.namespace, program.name)])
        started = time.monotonic()
        result = self.reconciler.run(programs, pods, held)
        self.metrics.pass_done(result, objects, pods, time.monotonic() - started)
        for listener in self.pass_listeners:
            try:
                listener(programs, pods, result)
            except Exception:  # never the end of the pass: the fast path is an optimisation
                log.exception("pass listener failed", extra={"node": self.node})
        for report in result.reports:
            obj = objects[(report.namespace, report.name)]
            if report.detached:
                self._remove_finalizer(obj)
            else:
                self._write_status(obj, node_program_status(report, self.node, obj.get("status")))
        self._release_refused(refused)
        return result

    def _release_refused(self, refused: list[dict[str, Any]]) -> None:
        """A refused object being deleted is not held, so the pass unloaded what ran of it; its
        finalizer goes once the kernel shows nothing of it (an unload that failed is retried)."""
        deleting = [obj for obj in refused if obj["metadata"].get("deletionTimestamp")]
        if not deleting:
            return
        running = {ref.program for ref in self.reconciler.backend.loaded()}
        for obj in deleting:
            if held_program(obj, self.trust) not in running:
                self._remove_finalizer(obj)

    def _addressed_here(self, obj: dict[str, Any]) -> bool:
        if addressed_to(obj, self.node):
            return True
        if self._first_time(obj, "ignored"):
            log.warning(
                "ignoring a node object labelled for this node but addressed to another",
                extra={"object": _name(obj), "nodeName": (obj.get("spec") or {}).get("nodeName")},
            )
        return False

    def _first_time(self, obj: dict[str, Any], why: str) -> bool:
        key = _log_key(obj, why)
        if key in self._logged:
            return False
        self._logged.add(key)
        return True

    def _refuse(self, obj: dict[str, Any], error: Exception) -> None:
        meta = obj["metadata"]
        if self._first_time(obj, "refused"):  # once, not on every pass
            log.warning(
                "refusing a node object",
                extra={"object": f"{meta['namespace']}/{meta['name']}", "error": str(error)},
            )
        if not meta.get("deletionTimestamp"):
            self._write_status(obj, self._invalid_status(obj, error))

    def _invalid_status(self, obj: dict[str, Any], error: Exception) -> dict[str, Any]:
        generation = obj["metadata"].get("generation")
        message = f"this agent cannot serve the spec: {error}"
        if not isinstance(error, TrustViolation):
            message += "; what ran of it on this node keeps running"
        ready = conditions.condition(conditions.READY, False, reasons.INVALID_SPEC, message, generation)
        return {
            "observedGeneration": generation,
            "node": self.node,
            "failures": [{"reason": reasons.INVALID_SPEC, "message": message}],
            "conditions": conditions.merge((obj.get("status") or {}).get("conditions"), [ready]),
        }

    def _write_status(self, obj: dict[str, Any], status: dict[str, Any]) -> None:
        # A merge patch deletes the fields it sets to None: what the status becomes is the rest.
        if (obj.get("status") or {}) == {k: v for k, v in status.items() if v is not None}:
            return  # nothing changed: no write
        meta = obj["metadata"]
        patching.merge_patch(
            self.custom,
            names.NODE_PROGRAM_PLURAL,
            meta["namespace"],
            meta["name"],
            {"status": status},
            status=True,
        )

    def _patch_finalizers(self, obj: dict[str, Any], finalizers: list[str]) -> None:
        meta = obj["metadata"]
        # resourceVersion makes this a compare-and-swap: never drop someone else's finalizer.
        body = {"metadata": {"finalizers": finalizers, "resourceVersion": meta["resourceVersion"]}}
        applied = patching.merge_patch(
            self.custom, names.NODE_PROGRAM_PLURAL, meta["namespace"], meta["name"], body, ignore=(404, 409)
        )
        if not applied:
            self._wake.set()  # changed under us: the next pass sees the new object

    def _add_finalizer(self, obj: dict[str, Any]) -> None:
        self._patch_finalizers(obj, [*(obj["metadata"].get("finalizers") or []), names.AGENT_FINALIZER])

    def _remove_finalizer(self, obj: dict[str, Any]) -> None:
        finalizers = obj["metadata"].get("finalizers") or []
        if names.AGENT_FINALIZER in finalizers:
            log.info(
                "detached everywhere on this node, releasing", extra={"program": obj["metadata"]["name"]}
            )
            self._patch_finalizers(obj, [f for f in finalizers if f != names.AGENT_FINALIZER])


def _name(obj: dict[str, Any]) -> str:
    return f"{obj['metadata']['namespace']}/{obj['metadata']['name']}"


def _log_key(obj: dict[str, Any], why: str) -> tuple[str, ...]:
    return (why, _name(obj), str(obj["metadata"].get("resourceVersion")))
