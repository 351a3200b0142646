"""Reconciles one EbpfProgram: its node objects, then its status. Level-triggered and idempotent.

kopf handlers only put program keys on a queue; one worker drains it, so a burst of events for a
program (node objects reporting, nodes changing) becomes one reconcile and at most one status write.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from kubernetes.client import ApiClient, CoreV1Api, CustomObjectsApi
from kubernetes.client.exceptions import ApiException

from bpfleet_api import names, patching
from bpfleet_operator import aggregate, fanout
from bpfleet_operator.sources import SourceError, resolve

log = logging.getLogger(__name__)

Key = tuple[str, str]  # (namespace, EbpfProgram name)

# An agent heartbeats every 20 s (BpfleetNode status.lastHeartbeat); after this long without one,
# its node is reported as not covered.
AGENT_SILENCE_SECONDS = float(os.environ.get("BPFLEET_AGENT_SILENCE_SECONDS", "90"))


def _ready_condition(status: dict[str, Any] | None) -> tuple[str | None, str | None]:
    for cond in (status or {}).get("conditions") or []:
        if cond.get("type") == "Ready":
            return cond.get("status"), cond.get("reason")
    return None, None


@dataclass(frozen=True)
class ClusterView:
    nodes: dict[str, dict[str, str]]  # name -> labels
    silent_agents: dict[str, str]  # node -> why its agent counts as gone


@dataclass
class Outcome:
    """What a reconcile did, for events and tests."""

    status_written: bool = False
    ready_before: tuple[str | None, str | None] = (None, None)
    ready_after: tuple[str | None, str | None] = (None, None)
    status: dict[str, Any] | None = None


class ProgramController:
    def __init__(self, api: ApiClient) -> None:
        self.core = CoreV1Api(api)
        self.custom = CustomObjectsApi(api)

    # -- reads --------------------------------------------------------------------------------

    def get_program(self, key: Key) -> dict[str, Any] | None:
        try:
            return self.custom.get_namespaced_custom_object(
                names.GROUP, names.VERSION, key[0], names.PROGRAM_PLURAL, key[1]
            )
        except ApiException as e:
            if e.status == 404:
                return None
            raise

    def nodes(self) -> dict[str, dict[str, str]]:
        return {n.metadata.name: dict(n.metadata.labels or {}) for n in self.core.list_node().items}

    def silent_agents(self) -> dict[str, str]:
        """Nodes whose agent has not heartbeated for AGENT_SILENCE_SECONDS, with what to tell users."""
        listed = self.custom.list_cluster_custom_object(names.GROUP, names.VERSION, names.NODE_STATE_PLURAL)
        now = datetime.datetime.now(datetime.UTC)
        silent = {}
        for node_state in listed["items"]:
            last = (node_state.get("status") or {}).get("lastHeartbeat")
            if not last:
                continue
            seen = datetime.datetime.fromisoformat(last.replace("Z", "+00:00"))
            if (now - seen).total_seconds() > AGENT_SILENCE_SECONDS:
                node = node_state["metadata"]["name"]
                silent[node] = (
                    f"the agent on {node} has not reported since {last}: pods that start there are not "
                    "covered until it is back (programs already attached keep running)"
                )
        return silent

    def node_programs(self, key: Key) -> list[dict[str, Any]]:
        listed = self.custom.list_namespaced_custom_object(
            names.GROUP,
            names.VERSION,
            key[0],
            names.NODE_PROGRAM_PLURAL,
            label_selector=f"{names.PROGRAM_LABEL}={key[1]}",
        )
        return list(listed["items"])

    def read_config_map(self, namespace: str, name: str) -> dict[str, str] | None:
        try:
            return dict(self.core.read_namespaced_config_map(name, namespace).data or {})
        except ApiException as e:
            if e.status == 404:
                return None
            raise

    # -- reconcile ----------------------------------------------------------------------------

    def cluster_view(self) -> ClusterView:
        """What every program of a batch shares: one list of Nodes and of agents' heartbeats."""
        return ClusterView(self.nodes(), self.silent_agents())

    def reconcile(self, key: Key, view: ClusterView | None = None) -> Outcome:
        program = self.get_program(key)
        if program is None or program["metadata"].get("deletionTimestamp"):
            return Outcome()  # deletion is the finalizer handler's job
        generation = program["metadata"]["generation"]
        previous = program.get("status") or {}
        try:
            source = resolve(key[0], program["spec"], self.read_config_map)
        except SourceError as e:
            # Leave the node objects as they are: what runs keeps running until the spec is fixed.
            return self._write_status(
                program, aggregate.stalled_status(generation, e.reason, str(e), previous)
            )

        view = view or self.cluster_view()
        nodes = view.nodes
        targeted = fanout.targeted_nodes(program["spec"], nodes)
        existing = {np["spec"]["nodeName"]: np for np in self.node_programs(key)}
        for node in targeted:
            wanted = fanout.node_program_object(program, node, source)
            current = existing.get(node)
            if current is None:
                self._create(wanted)
            elif current["spec"] != wanted["spec"]:
                self._replace_spec(current, wanted["spec"])
        for node, current in existing.items():
            if node not in targeted:
                self.release_node_program(current, node_exists=node in nodes)

        node_programs = self.node_programs(key)
        status = aggregate.program_status(generation, targeted, node_programs, previous, view.silent_agents)
        status["sourceHash"] = source.sha256
        return self._write_status(program, status)

    def _create(self, body: dict[str, Any]) -> None:
        meta = body["metadata"]
        log.info("creating node program", extra={"namespace": meta["namespace"], "object": meta["name"]})
        try:
            self.custom.create_namespaced_custom_object(
                names.GROUP, names.VERSION, meta["namespace"], names.NODE_PROGRAM_PLURAL, body
            )
        except ApiException as e:
            if e.status != 409:  # created meanwhile: the next pass compares specs
                raise

    def _replace_spec(self, current: dict[str, Any], spec: dict[str, Any]) -> None:
        meta = current["metadata"]
        log.info("updating node program", extra={"namespace": meta["namespace"], "object": meta["name"]})
        # A JSON merge patch would merge selector maps; replace spec whole with a JSON patch.
        self.custom.patch_namespaced_custom_object(
            names.GROUP,
            names.VERSION,
            meta["namespace"],
            names.NODE_PROGRAM_PLURAL,
            meta["name"],
            [{"op": "replace", "path": "/spec", "value": spec}],
            _content_type="application/json-patch+json",
        )

    def release_node_program(self, node_program: dict[str, Any], node_exists: bool) -> None:
        """Deletes a node object; when its node is gone no agent will detach, so drop its finalizer."""
        meta = node_program["metadata"]
        if not meta.get("deletionTimestamp"):
            log.info("deleting node program", extra={"namespace": meta["namespace"], "object": meta["name"]})
            try:
                self.custom.delete_namespaced_custom_object(
                    names.GROUP, names.VERSION, meta["namespace"], names.NODE_PROGRAM_PLURAL, meta["name"]
                )
            except ApiException as e:
                if e.status != 404:
                    raise
        if not node_exists and names.AGENT_FINALIZER in (meta.get("finalizers") or []):
            log.info("node is gone, releasing its node program", extra={"object": meta["name"]})
            finalizers = [f for f in meta["finalizers"] if f != names.AGENT_FINALIZER]
            patching.merge_patch(
                self.custom,
                names.NODE_PROGRAM_PLURAL,
                meta["namespace"],
                meta["name"],
                {"metadata": {"finalizers": finalizers}},
            )

    def _write_status(self, program: dict[str, Any], status: dict[str, Any]) -> Outcome:
        previous = program.get("status") or {}
        outcome = Outcome(
            ready_before=_ready_condition(previous), ready_after=_ready_condition(status), status=status
        )
        if all(previous.get(k) == v for k, v in status.items()):
            return outcome
        meta = program["metadata"]
        patching.merge_patch(
            self.custom,
            names.PROGRAM_PLURAL,
            meta["namespace"],
            meta["name"],
            {"status": status},
            status=True,
        )
        outcome.status_written = True
        return outcome

    def teardown(self, key: Key) -> list[str]:
        """Deletes every node object of a program; returns the nodes still detaching it."""
        nodes = self.nodes()
        remaining = []
        for node_program in self.node_programs(key):
            node = node_program["spec"]["nodeName"]
            self.release_node_program(node_program, node_exists=node in nodes)
            if node in nodes:
                remaining.append(node)
        return sorted(remaining)


class WorkQueue:
    """Coalesces keys: each key queued any number of times during the delay is reconciled once."""

    def __init__(
        self,
        handle: Callable[[Key], Awaitable[Any]],
        delay: float = 0.1,
        retry: float = 2.0,
        before_batch: Callable[[], Awaitable[Any]] | None = None,
    ) -> None:
        self.handle, self.delay, self.retry = handle, delay, retry
        # Reads shared by every key of a batch happen once, here, not once per key.
        self.before_batch = before_batch
        self._pending: set[Key] = set()
        self._wake = asyncio.Event()
        self._stopped = False

    def add(self, key: Key) -> None:
        self._pending.add(key)
        self._wake.set()

    def stop(self) -> None:
        self._stopped = True
        self._wake.set()

    async def run(self) -> None:
        while not self._stopped:
            await self._wake.wait()
            if self._stopped:
                break
            await asyncio.sleep(self.delay)
            self._wake.clear()
            keys, self._pending = self._pending, set()
            if self.before_batch is not None:
                try:
                    await self.before_batch()
                except Exception:
                    log.exception("preparing a batch failed; retrying it")
                    for key in keys:
                        asyncio.get_running_loop().call_later(self.retry, self.add, key)
                    continue
            for key in sorted(keys):
                try:
                    await self.handle(key)
                except Exception:
                    log.exception(
                        "reconcile failed; retrying", extra={"namespace": key[0], "program": key[1]}
                    )
                    asyncio.get_running_loop().call_later(self.retry, self.add, key)
