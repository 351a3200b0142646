"""kopf registrations. Handlers only note what changed; the controller does the work.

Both program kinds go through the same handlers: the kind comes from the resource of the event.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections import defaultdict
from typing import Any

import kopf

from bpfleet_api import names, reasons
from bpfleet_api.kube_client import api_client
from bpfleet_operator import deletion, events, kinds, watch_settings
from bpfleet_operator.backoff import capped_backoffs
from bpfleet_operator.controller import DELETE_GRACE_SECONDS, ClusterView, ProgramController
from bpfleet_operator.fleet_events import FanoutInputs
from bpfleet_operator.kinds import ProgramKey
from bpfleet_operator.metrics import METRICS
from bpfleet_operator.workqueue import WorkQueue

log = logging.getLogger(__name__)


class _State:
    """What the handlers share in this process."""

    controller: ProgramController
    view: ClusterView | None = None  # Nodes, heartbeats, Namespaces, read once per batch of reconciles
    queue: WorkQueue
    worker: asyncio.Task[None]

    def __init__(self) -> None:
        self.programs: set[ProgramKey] = set()
        # (namespace, ConfigMap name) -> programs whose source is in it: editing it rolls them.
        self.config_map_users: defaultdict[tuple[str, str], set[ProgramKey]] = defaultdict(set)
        # The notes last posted as a Warning event, so that one bad annotation is one event.
        self.noted: dict[ProgramKey, tuple[str, ...]] = {}
        self.fanout_inputs = FanoutInputs()


STATE = _State()


@kopf.on.startup()
async def startup(settings: kopf.OperatorSettings, **_: Any) -> None:
    settings.persistence.finalizer = names.OPERATOR_FINALIZER
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=names.GROUP)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=names.GROUP, key="last-handled-configuration"
    )
    settings.posting.level = logging.INFO
    settings.networking.error_backoffs = capped_backoffs()  # back within ~2 s of the API server
    watch_settings.apply(settings)  # a stalled watch is noticed within 35 s
    STATE.controller = ProgramController.from_client(api_client())
    STATE.queue = WorkQueue(reconcile, before_batch=refresh_view)
    STATE.worker = asyncio.create_task(STATE.queue.run())
    log.info("node objects of ClusterEbpfPrograms live here", extra={"namespace": names.system_namespace()})


@kopf.on.cleanup()
async def cleanup(**_: Any) -> None:
    STATE.queue.stop()
    await STATE.worker


async def refresh_view() -> None:
    STATE.view = await asyncio.to_thread(STATE.controller.cluster_view)


async def _post(program: dict[str, Any], kind: str, reason: str, message: str) -> None:
    await asyncio.to_thread(events.post, STATE.controller.core, program, kind, reason, message)


async def reconcile(key: ProgramKey) -> None:
    with METRICS.reconcile_seconds.time():
        outcome = await asyncio.to_thread(STATE.controller.reconcile, key, STATE.view)
    METRICS.observe(key, outcome)
    notes_changed = outcome.status is not None and STATE.noted.get(key, ()) != outcome.notes
    ready_changed = outcome.status is not None and outcome.ready_before != outcome.ready_after
    if not (notes_changed or ready_changed):
        return
    program = await asyncio.to_thread(STATE.controller.get_program, key)
    if program is None:
        return
    if notes_changed:
        STATE.noted[key] = outcome.notes
        for note in outcome.notes:
            await _post(program, "Warning", reasons.INVALID_ANNOTATION, note)
    if not ready_changed:
        return
    assert outcome.status is not None
    ready, reason = outcome.ready_after
    message = next(
        (c.get("message", "") for c in outcome.status.get("conditions", []) if c.get("type") == "Ready"), ""
    )
    if ready == "True":
        await _post(program, "Normal", "RolledOut", message)
    elif reason not in (None, "Progressing"):
        await _post(program, "Warning", reason or "Failed", message)


def _key(resource: kopf.Resource, namespace: str | None, name: str) -> ProgramKey:
    return kinds.by_plural(resource.plural).key(namespace, name)


def _forget(key: ProgramKey) -> None:
    for users in STATE.config_map_users.values():
        users.discard(key)


@kopf.on.event(names.GROUP, names.VERSION, names.PROGRAM_PLURAL)
@kopf.on.event(names.GROUP, names.VERSION, names.CLUSTER_PROGRAM_PLURAL)
def program_event(
    resource: kopf.Resource,
    namespace: str | None,
    name: str,
    spec: dict[str, Any],
    type: str | None,
    **_: Any,
) -> None:
    key = _key(resource, namespace, name)
    _forget(key)
    if type == "DELETED":
        STATE.programs.discard(key)
        STATE.noted.pop(key, None)
        METRICS.forget(key)
        return
    STATE.programs.add(key)
    if (spec.get("source") or {}).get("configMapRef"):
        ref_namespace = kinds.of(key).config_map_namespace(key, spec)
        STATE.config_map_users[(ref_namespace, spec["source"]["configMapRef"]["name"])].add(key)
    STATE.queue.add(key)


@kopf.on.create(names.GROUP, names.VERSION, names.PROGRAM_PLURAL)
@kopf.on.create(names.GROUP, names.VERSION, names.CLUSTER_PROGRAM_PLURAL)
def program_created(body: kopf.Body, **_: Any) -> None:
    message = "program accepted; rolling out to the selected nodes"
    events.post(STATE.controller.core, dict(body), "Normal", "Accepted", message)


@kopf.on.event(names.GROUP, names.VERSION, names.NODE_PROGRAM_PLURAL)
def node_program_event(body: kopf.Body, **_: Any) -> None:
    key = kinds.key_of_node_program(body)
    if key is not None:
        STATE.queue.add(key)


def _queue_every_program() -> None:
    for key in STATE.programs:
        STATE.queue.add(key)


@kopf.on.event("", "v1", "nodes")
def node_event(name: str, meta: kopf.Meta, type: str | None, **_: Any) -> None:
    # Nodes joining, leaving or being relabelled change every program's fan-out; heartbeats do not.
    if STATE.fanout_inputs.node_event(name, meta.get("labels"), deleted=type == "DELETED"):
        _queue_every_program()


@kopf.on.event(names.GROUP, names.VERSION, names.NODE_STATE_PLURAL)
def agent_event(name: str, type: str | None, **_: Any) -> None:
    # An agent starting (or going away) adds (or removes) its node from every fan-out; a heartbeat
    # matters only from an agent reported silent, whose nodes' status it clears.
    was_silent = STATE.view is not None and name in STATE.view.agents.silent
    if STATE.fanout_inputs.agent_event(name, deleted=type == "DELETED", was_silent=was_silent):
        _queue_every_program()


@kopf.on.event("", "v1", "namespaces")
def namespace_event(name: str, **_: Any) -> None:
    # Labels pick a ClusterEbpfProgram's namespaces; an annotation caps an EbpfProgram's maps.
    for key in STATE.programs:
        if key.kind == names.CLUSTER_PROGRAM_KIND or key.namespace == name:
            STATE.queue.add(key)


@kopf.on.event("", "v1", "configmaps")
def config_map_event(namespace: str, name: str, **_: Any) -> None:
    for key in STATE.config_map_users.get((namespace, name), ()):
        STATE.queue.add(key)


# Level-triggered backstop, and how a silent agent gets noticed when nothing else changes.
RESYNC_SECONDS = float(os.environ.get("BPFLEET_RESYNC_SECONDS", "60"))


@kopf.timer(names.GROUP, names.VERSION, names.PROGRAM_PLURAL, interval=RESYNC_SECONDS)
@kopf.timer(names.GROUP, names.VERSION, names.CLUSTER_PROGRAM_PLURAL, interval=RESYNC_SECONDS)
def resync(resource: kopf.Resource, namespace: str | None, name: str, **_: Any) -> None:
    STATE.queue.add(_key(resource, namespace, name))


@kopf.on.delete(names.GROUP, names.VERSION, names.PROGRAM_PLURAL)
@kopf.on.delete(names.GROUP, names.VERSION, names.CLUSTER_PROGRAM_PLURAL)
async def program_deleted(
    resource: kopf.Resource, namespace: str | None, name: str, body: kopf.Body, **_: Any
) -> None:
    key = _key(resource, namespace, name)
    result = await asyncio.to_thread(STATE.controller.teardown, key)
    if result.given_up:
        message = deletion.orphan_warning(key, result.given_up, DELETE_GRACE_SECONDS)
        await _post(dict(body), "Warning", reasons.AGENT_SILENT_ON_DELETE, message)
    if result.waiting:
        raise kopf.TemporaryError(f"waiting for the agents on {', '.join(result.waiting)} to detach", delay=1)
    await _post(dict(body), "Normal", "Deleted", "detached from every node")
