"""kopf registrations. Handlers only note what changed; the controller does the work."""

from __future__ import annotations

import asyncio
import logging
import os
from collections import defaultdict
from typing import Any

import kopf

from bpfleet_api import names
from bpfleet_api.kube_client import api_client
from bpfleet_operator import events
from bpfleet_operator.controller import ClusterView, Key, ProgramController, WorkQueue
from bpfleet_operator.metrics import METRICS

log = logging.getLogger(__name__)


class _State:
    """What the handlers share in this process."""

    controller: ProgramController
    view: ClusterView | None = None  # Nodes and heartbeats, read once per batch of reconciles
    queue: WorkQueue
    worker: asyncio.Task[None]

    def __init__(self) -> None:
        self.programs: set[Key] = set()
        # (namespace, ConfigMap name) -> programs whose source is in it: editing it rolls them.
        self.config_map_users: defaultdict[tuple[str, str], set[Key]] = defaultdict(set)


STATE = _State()


@kopf.on.startup()
async def startup(settings: kopf.OperatorSettings, **_: Any) -> None:
    settings.persistence.finalizer = names.OPERATOR_FINALIZER
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=names.GROUP)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=names.GROUP, key="last-handled-configuration"
    )
    settings.posting.level = logging.INFO
    STATE.controller = ProgramController(api_client())
    STATE.queue = WorkQueue(reconcile, before_batch=refresh_view)
    STATE.worker = asyncio.create_task(STATE.queue.run())


@kopf.on.cleanup()
async def cleanup(**_: Any) -> None:
    STATE.queue.stop()
    await STATE.worker


async def refresh_view() -> None:
    STATE.view = await asyncio.to_thread(STATE.controller.cluster_view)


async def reconcile(key: Key) -> None:
    with METRICS.reconcile_seconds.time():
        outcome = await asyncio.to_thread(STATE.controller.reconcile, key, STATE.view)
    METRICS.observe(key, outcome)
    if outcome.status is None or outcome.ready_before == outcome.ready_after:
        return
    program = await asyncio.to_thread(STATE.controller.get_program, key)
    if program is None:
        return
    ready, reason = outcome.ready_after
    message = next(
        (c.get("message", "") for c in outcome.status.get("conditions", []) if c.get("type") == "Ready"), ""
    )
    if ready == "True":
        await asyncio.to_thread(events.post, STATE.controller.core, program, "Normal", "RolledOut", message)
    elif reason not in (None, "Progressing"):
        await asyncio.to_thread(
            events.post, STATE.controller.core, program, "Warning", reason or "Failed", message
        )


@kopf.on.event(names.GROUP, names.VERSION, names.PROGRAM_PLURAL)
def program_event(namespace: str, name: str, spec: dict[str, Any], type: str | None, **_: Any) -> None:
    key = (namespace, name)
    for users in STATE.config_map_users.values():
        users.discard(key)
    if type == "DELETED":
        STATE.programs.discard(key)
        METRICS.forget(key)
        return
    STATE.programs.add(key)
    ref = (spec.get("source") or {}).get("configMapRef")
    if ref:
        STATE.config_map_users[(namespace, ref["name"])].add(key)
    STATE.queue.add(key)


@kopf.on.create(names.GROUP, names.VERSION, names.PROGRAM_PLURAL)
def program_created(body: kopf.Body, **_: Any) -> None:
    message = "program accepted; rolling out to the selected nodes"
    events.post(STATE.controller.core, dict(body), "Normal", "Accepted", message)


@kopf.on.event(names.GROUP, names.VERSION, names.NODE_PROGRAM_PLURAL)
def node_program_event(namespace: str, labels: dict[str, str], **_: Any) -> None:
    program = labels.get(names.PROGRAM_LABEL)
    if program:
        STATE.queue.add((namespace, program))


@kopf.on.event("", "v1", "nodes")
def node_event(**_: Any) -> None:
    # Nodes joining, leaving or being relabelled change every program's fan-out.
    for key in STATE.programs:
        STATE.queue.add(key)


@kopf.on.event("", "v1", "configmaps")
def config_map_event(namespace: str, name: str, **_: Any) -> None:
    for key in STATE.config_map_users.get((namespace, name), ()):
        STATE.queue.add(key)


# Level-triggered backstop, and how a silent agent gets noticed when nothing else changes.
RESYNC_SECONDS = float(os.environ.get("BPFLEET_RESYNC_SECONDS", "60"))


@kopf.timer(names.GROUP, names.VERSION, names.PROGRAM_PLURAL, interval=RESYNC_SECONDS)
def resync(namespace: str, name: str, **_: Any) -> None:
    STATE.queue.add((namespace, name))


@kopf.on.delete(names.GROUP, names.VERSION, names.PROGRAM_PLURAL)
async def program_deleted(namespace: str, name: str, body: kopf.Body, **_: Any) -> None:
    remaining = await asyncio.to_thread(STATE.controller.teardown, (namespace, name))
    if remaining:
        raise kopf.TemporaryError(f"waiting for the agents on {', '.join(remaining)} to detach", delay=1)
    message = "detached from every node"
    await asyncio.to_thread(events.post, STATE.controller.core, dict(body), "Normal", "Deleted", message)
