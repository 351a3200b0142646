"""Reconciles one program, of either kind: its node objects, then its status. Level-triggered and
idempotent.

kopf handlers only put program keys on a queue (workqueue.py); one worker drains it, so a burst of
events for a program (node objects reporting, nodes changing) becomes one reconcile and at most one
status write.
"""

from __future__ import annotations

import datetime
import json
import logging
import os
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from kubernetes.client import ApiClient, CoreV1Api, CustomObjectsApi
from kubernetes.client.exceptions import ApiException

from bpfleet_api import names, patching, reasons
from bpfleet_operator import agents, aggregate, deletion, fanout, kinds, tenancy
from bpfleet_operator.agents import Agents
from bpfleet_operator.deletion import Release
from bpfleet_operator.kinds import ProgramKey
from bpfleet_operator.sources import SourceError, resolve
from bpfleet_operator.tenancy import NamespaceInfo

log = logging.getLogger(__name__)

# An agent heartbeats every 20 s (BpfleetNode status.lastHeartbeat); after this long without one,
# its node is reported as not covered.
AGENT_SILENCE_SECONDS = float(os.environ.get("BPFLEET_AGENT_SILENCE_SECONDS", "90"))
# How long a deletion waits for a silent agent to detach before it completes without it.
DELETE_GRACE_SECONDS = float(os.environ.get("BPFLEET_DELETE_GRACE_SECONDS", "300"))

# Answers to a node object write that retrying the same write cannot change: an invalid object, or
# (on create) a namespace that does not exist, whose creation brings the program back here.
_REFUSED = (400, 404, 422)


def _ready_condition(status: dict[str, Any] | None) -> tuple[str | None, str | None]:
    for cond in (status or {}).get("conditions") or []:
        if cond.get("type") == "Ready":
            return cond.get("status"), cond.get("reason")
    return None, None


def _api_message(e: ApiException) -> str:
    try:
        return str(json.loads(e.body or "")["message"])
    except (ValueError, KeyError, TypeError):
        return f"{e.status} {e.reason}"


@dataclass(frozen=True)
class ClusterView:
    """What every program of a batch shares, read once per batch."""

    nodes: dict[str, dict[str, str]]  # name -> labels
    agents: Agents  # which nodes run an agent, and which agents went silent
    namespaces: dict[str, NamespaceInfo] = field(default_factory=dict)


@dataclass(frozen=True)
class Teardown:
    """Where a deleted program still waits for an agent, and where it gave up waiting."""

    waiting: list[str]  # nodes whose agent has not detached yet
    given_up: list[str]  # nodes whose silent agent outlasted the grace period: may still run it


@dataclass
class Outcome:
    """What a reconcile did, for events and tests."""

    status_written: bool = False
    ready_before: tuple[str | None, str | None] = (None, None)
    ready_after: tuple[str | None, str | None] = (None, None)
    status: dict[str, Any] | None = None
    notes: tuple[str, ...] = ()


class ProgramController:
    def __init__(self, core: CoreV1Api, custom: CustomObjectsApi) -> None:
        self.core, self.custom = core, custom

    @classmethod
    def from_client(cls, api: ApiClient) -> ProgramController:
        return cls(CoreV1Api(api), CustomObjectsApi(api))

    # -- reads --------------------------------------------------------------------------------

    def get_program(self, key: ProgramKey) -> dict[str, Any] | None:
        kind = kinds.of(key)
        try:
            if kind.namespaced:
                return self.custom.get_namespaced_custom_object(
                    names.GROUP, names.VERSION, key.namespace, kind.plural, key.name
                )
            return self.custom.get_cluster_custom_object(names.GROUP, names.VERSION, kind.plural, key.name)
        except ApiException as e:
            if e.status == 404:
                return None
            raise

    def nodes(self) -> dict[str, dict[str, str]]:
        return {n.metadata.name: dict(n.metadata.labels or {}) for n in self.core.list_node().items}

    def namespaces(self) -> dict[str, NamespaceInfo]:
        return {
            ns.metadata.name: NamespaceInfo(
                dict(ns.metadata.labels or {}), dict(ns.metadata.annotations or {})
            )
            for ns in self.core.list_namespace().items
        }

    def agents(self) -> Agents:
        """Nodes with a BpfleetNode; those not heartbeated for AGENT_SILENCE_SECONDS are silent."""
        listed = self.custom.list_cluster_custom_object(names.GROUP, names.VERSION, names.NODE_STATE_PLURAL)
        now = datetime.datetime.now(datetime.UTC)
        return agents.from_node_states(listed["items"], now, AGENT_SILENCE_SECONDS)

    def node_programs(self, key: ProgramKey) -> list[dict[str, Any]]:
        """The program's node objects: by label, then by spec, since a long name's label value is
        a hash that another name could be made to equal."""
        kind = kinds.of(key)
        listed = self.custom.list_namespaced_custom_object(
            names.GROUP,
            names.VERSION,
            kind.node_namespace(key),
            names.NODE_PROGRAM_PLURAL,
            label_selector=f"{kind.label}={names.label_value(key.name)}",
        )
        return [np for np in listed["items"] if kinds.key_of_node_program(np) == key]

    def read_config_map(self, namespace: str, name: str) -> dict[str, str] | None:
        try:
            return dict(self.core.read_namespaced_config_map(name, namespace).data or {})
        except ApiException as e:
            if e.status == 404:
                return None
            raise

    # -- reconcile ----------------------------------------------------------------------------

    def cluster_view(self) -> ClusterView:
        """What every program of a batch shares: Nodes, agents' heartbeats, Namespaces."""
        return ClusterView(self.nodes(), self.agents(), self.namespaces())

    def reconcile(self, key: ProgramKey, view: ClusterView | None = None) -> Outcome:
        kind = kinds.of(key)
        program = self.get_program(key)
        if program is None or program["metadata"].get("deletionTimestamp"):
            return Outcome()  # deletion is the finalizer handler's job
        generation = program["metadata"]["generation"]
        previous = program.get("status") or {}
        spec = program["spec"]
        try:
            if problems := tenancy.problems(kind, spec):
                raise SourceError(reasons.INVALID_SPEC, "; ".join(problems))
            source = resolve(
                kind.config_map_namespace(key, spec),
                spec,
                self.read_config_map,
                origin_namespace=not kind.namespaced,
            )
        except SourceError as e:
            # Leave the node objects as they are: what runs keeps running until the spec is fixed.
            return self._write_status(
                key, program, aggregate.stalled_status(generation, e.reason, str(e), previous)
            )

        view = view or self.cluster_view()
        reach = tenancy.reach(kind, key.namespace, spec, view.namespaces)
        # A node that runs no agent gets no node object: nobody there would serve it or detach it.
        targeted, without_agent = agents.split(fanout.targeted_nodes(spec, view.nodes), view.agents)
        objects = fanout.NodeObjects(program, source, kind=kind, reach=reach)
        wanted = {node: objects.for_node(node) for node in targeted}
        existing = self.node_programs(key)
        plan = fanout.plan(wanted, existing)
        writes = [(body, partial(self._create, body)) for body in plan.create]
        writes += [(body, partial(self._update, current, body)) for current, body in plan.update]
        refused: dict[str, str] = {}
        for body, write in writes:
            try:
                write()
            except ApiException as e:
                # One the API server refuses goes to status instead of being retried for ever.
                if e.status not in _REFUSED:
                    raise
                meta, message = body["metadata"], _api_message(e)
                log.warning("node object refused", extra={"object": meta["name"], "error": message})
                refused[body["spec"]["nodeName"]] = (
                    f"the API server refused node object {meta['namespace']}/{meta['name']}: {message}"
                )
        for obj in plan.release:
            unattended = deletion.decide(obj, view.nodes, view.agents, _now(), DELETE_GRACE_SECONDS)
            self.release_node_program(obj, drop_finalizer=unattended is Release.NOBODY)

        # Read again only when this reconcile changed them.
        current = self.node_programs(key) if writes or plan.release else existing
        status = aggregate.program_status(
            generation,
            targeted,
            current,
            previous,
            view.agents.silent,
            refused=refused,
            notes=reach.notes,
            without_agent=len(without_agent),
        )
        status["sourceHash"] = source.sha256
        outcome = self._write_status(key, program, status)
        outcome.notes = reach.notes
        return outcome

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

    def _update(self, current: dict[str, Any], wanted: dict[str, Any]) -> None:
        meta, wanted_meta = current["metadata"], wanted["metadata"]
        log.info("updating node program", extra={"namespace": meta["namespace"], "object": meta["name"]})
        # A JSON merge patch would merge selector maps; replace spec whole with a JSON patch. An
        # adopted object (named the old way) gets the labels and the owner it lacks.
        owners = [ref for ref in meta.get("ownerReferences") or [] if not ref.get("controller")]
        ops = [
            {"op": "replace", "path": "/spec", "value": wanted["spec"]},
            {
                "op": "add",
                "path": "/metadata/labels",
                "value": {**(meta.get("labels") or {}), **wanted_meta["labels"]},
            },
            {
                "op": "add",
                "path": "/metadata/ownerReferences",
                "value": owners + wanted_meta["ownerReferences"],
            },
        ]
        try:
            self.custom.patch_namespaced_custom_object(
                names.GROUP,
                names.VERSION,
                meta["namespace"],
                names.NODE_PROGRAM_PLURAL,
                meta["name"],
                ops,
                _content_type="application/json-patch+json",
            )
        except ApiException as e:
            if e.status != 404:  # deleted meanwhile: its deletion event brings the program back here
                raise

    def release_node_program(self, node_program: dict[str, Any], drop_finalizer: bool) -> None:
        """Deletes a node object; `drop_finalizer` when no agent will detach it (its node is gone or
        runs no agent, or its silent agent outlasted the grace period)."""
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
        if drop_finalizer and names.AGENT_FINALIZER in (meta.get("finalizers") or []):
            log.info("no agent will detach, releasing its node program", extra={"object": meta["name"]})
            finalizers = [f for f in meta["finalizers"] if f != names.AGENT_FINALIZER]
            patching.merge_patch(
                self.custom,
                names.NODE_PROGRAM_PLURAL,
                meta["namespace"],
                meta["name"],
                {"metadata": {"finalizers": finalizers}},
            )

    def _write_status(self, key: ProgramKey, program: dict[str, Any], status: dict[str, Any]) -> Outcome:
        previous = program.get("status") or {}
        outcome = Outcome(
            ready_before=_ready_condition(previous), ready_after=_ready_condition(status), status=status
        )
        if all(previous.get(k) == v for k, v in status.items()):
            return outcome
        kind = kinds.of(key)
        patching.merge_patch(
            self.custom, kind.plural, kind.api_namespace(key), key.name, {"status": status}, status=True
        )
        outcome.status_written = True
        return outcome

    def teardown(self, key: ProgramKey) -> Teardown:
        """Deletes every node object of a program. Waits for live agents only: a node that is gone
        or runs no agent is released at once, one whose agent is silent after DELETE_GRACE_SECONDS.
        Reads Nodes and agents afresh: a deletion retried on its own is not part of a batch."""
        nodes, present = self.nodes(), self.agents()
        waiting, given_up = [], []
        for node_program in self.node_programs(key):
            node, held = node_program["spec"]["nodeName"], node_program["metadata"].get("finalizers") or []
            release = deletion.decide(node_program, nodes, present, _now(), DELETE_GRACE_SECONDS)
            self.release_node_program(node_program, drop_finalizer=release is not Release.WAIT)
            if release is Release.WAIT:
                waiting.append(node)
            elif release is Release.GRACE_EXPIRED and names.AGENT_FINALIZER in held:
                given_up.append(node)  # once: the next pass finds the finalizer gone
        return Teardown(sorted(waiting), sorted(given_up))


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)
