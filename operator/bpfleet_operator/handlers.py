"""kopf registrations. Handlers only note what changed; the controller and the node writer do the work.

Both program kinds go through the same handlers: the kind comes from the resource of the event.
Nodes, agents, Namespaces and EbpfNodeStates are not kopf's: the operator's own watch caches
(cluster_cache.py) follow them, and only what changes a fan-out or a program's entries queues work.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections import defaultdict
from collections.abc import Collection
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import kopf
from kubernetes.client import CoreV1Api, CustomObjectsApi

from bpfleet_api import names, reasons
from bpfleet_api.kube_client import api_client
from bpfleet_api.rest import RestClient
from bpfleet_operator import deletion, events, kinds, kopf_persistence, watch_settings
from bpfleet_operator.backoff import capped_backoffs
from bpfleet_operator.cluster_cache import ClusterCache, Hooks
from bpfleet_operator.controller import DELETE_GRACE_SECONDS, ProgramController
from bpfleet_operator.desired import DesiredTable
from bpfleet_operator.kinds import ProgramKey
from bpfleet_operator.metrics import METRICS
from bpfleet_operator.node_writer import NodeWriter
from bpfleet_operator.placement_writer import PlacementWriter
from bpfleet_operator.sources import config_map_ref
from bpfleet_operator.version_store import metadata_lister
from bpfleet_operator.workqueue import WorkQueue

log = logging.getLogger(__name__)

WORKERS_ENV = "BPFLEET_WORKERS"
DEFAULT_WORKERS = 4
# Node writes wait on the API server, not on the operator's CPU. More at once helped 5,000 nodes
# of one small entry each, and slowed 1,000 nodes of 50 entries (27 KiB an object) by a quarter,
# the API server being the bottleneck: 4 by default (docs/development.md, the fleet figures).
NODE_WRITERS_ENV = "BPFLEET_NODE_WRITERS"
DEFAULT_NODE_WRITERS = 4
# The first change to the desired table after a quiet second is written at once when it touches
# at most LEADING_MAX_NODES nodes: a program applied alone is not held back. Node writes for the
# changes that follow it (and for larger ones, which a burst of fleet-wide programs starts) wait
# until no reconcile changed the table for QUIET_SECONDS (or until MAX_COALESCE_SECONDS passed),
# so that a burst of programs is one or two writes per node, not one per program. Reconciles that
# only aggregate status (most of them, on a busy fleet) change nothing there and delay nothing.
QUIET_SECONDS = 1.0
LEADING_MAX_NODES = 100
MAX_COALESCE_SECONDS = 5.0
# Agents' reports wake a program at once, then at most once per interval. Summing a program's
# status up looks at each of its nodes, so the interval grows with them: 10 ms for a few nodes (an
# agent's "compiling" then "attached" reports come that close on one node), a second from a
# thousand on, summing up every node that reported meanwhile, not once per node.
REPORT_INTERVAL_SECONDS = 1.0
MIN_REPORT_INTERVAL_SECONDS = 0.01
REPORT_SECONDS_PER_NODE = 0.001
ACCEPTED_MESSAGE = "program accepted; rolling out to the selected nodes"
# How long a queued key waits for more events of its own before it is handled.
PROGRAM_DELAY_SECONDS = 0.02
NODE_DELAY_SECONDS = 0.02


class _State:
    """What the handlers share in this process."""

    controller: ProgramController
    cache: ClusterCache
    writer: NodeWriter
    desired: DesiredTable
    queue: WorkQueue  # program keys
    nodes: WorkQueue  # node names, for the node writer
    loop: asyncio.AbstractEventLoop
    tasks: list[asyncio.Task[Any]]

    def __init__(self) -> None:
        self.programs: set[ProgramKey] = set()
        # (namespace, ConfigMap name) -> programs whose source is in it: editing it rolls them.
        self.config_map_users: defaultdict[tuple[str, str], set[ProgramKey]] = defaultdict(set)
        # What of each program its reconcile depends on, as last seen: its own status writes
        # (one per node report, on a busy fleet) change none of it and queue nothing.
        self.seen: dict[ProgramKey, tuple[Any, ...]] = {}
        # The notes last posted as a Warning event, so that one bad annotation is one event.
        self.noted: dict[ProgramKey, tuple[str, ...]] = {}
        self.open = asyncio.Event()  # the node writer may write: every program was reconciled once
        self.last_desired_change = -QUIET_SECONDS  # loop time
        self.dirty_since: float | None = None  # when the table began changing without a quiet pause
        self.leading: set[str] = set()  # nodes of the first change after a quiet second: no wait
        self.last_reconciled: dict[ProgramKey, float] = {}  # loop time a reconcile last began
        self.node_state_changes = 0  # EbpfNodeState events seen: agents' reports among them
        self.posting: set[asyncio.Task[None]] = set()  # events being posted


STATE = _State()


def workers() -> int:
    return max(int(os.environ.get(WORKERS_ENV) or DEFAULT_WORKERS), 1)


def node_writers() -> int:
    return max(int(os.environ.get(NODE_WRITERS_ENV) or DEFAULT_NODE_WRITERS), 1)


@kopf.on.startup()
async def startup(settings: kopf.OperatorSettings, **_: Any) -> None:
    kopf_persistence.configure(settings)  # a finalizer, and no copy of the spec in an annotation
    # kopf's own Events only for what went wrong: its "Handler ... succeeded" lines, one per
    # program created and one per resync tick, would be API writes that tell a user nothing.
    settings.posting.level = logging.WARNING
    settings.networking.error_backoffs = capped_backoffs()  # back within ~2 s of the API server
    watch_settings.apply(settings)  # a stalled watch is noticed within 35 s
    STATE.loop = asyncio.get_running_loop()
    STATE.open = asyncio.Event()
    api = api_client()
    custom = CustomObjectsApi(api)
    # The watches' connections (ClusterCache's five), the node writers' and a few for the rest.
    rest = RestClient.load(connections=9 + node_writers())
    STATE.cache = ClusterCache(
        rest,
        Hooks(
            fanout_changed=lambda: _soon(_queue_every_program),
            programs_changed=lambda keys: _soon(_queue_programs, keys),
            namespace_changed=lambda name: _soon(_queue_namespace, name),
            node_state_changed=lambda node: _soon(_node_state_changed, node),
            agent_changed=lambda node: _soon(STATE.nodes.add, node),
        ),
    )
    desired = STATE.desired = DesiredTable()
    STATE.controller = ProgramController(
        CoreV1Api(api),
        custom,
        STATE.cache,
        desired,
        lambda nodes: _soon(_queue_nodes, nodes),
        metadata_lister(rest),
        PlacementWriter(rest, STATE.cache),
    )
    STATE.writer = NodeWriter(rest, desired, STATE.cache, METRICS.node_state_writes)
    count, writers = workers(), node_writers()
    # Reconciles and node writes run in threads (asyncio.to_thread): enough of them for both.
    STATE.loop.set_default_executor(ThreadPoolExecutor(max_workers=count + writers + 4))
    STATE.queue = WorkQueue(reconcile, delay=PROGRAM_DELAY_SECONDS, workers=count)
    STATE.nodes = WorkQueue(write_node, delay=NODE_DELAY_SECONDS, workers=writers, name="node")
    STATE.cache.start()
    STATE.tasks = [
        asyncio.create_task(STATE.queue.run()),
        asyncio.create_task(STATE.nodes.run()),
        asyncio.create_task(_open_when_seen(custom)),
    ]
    log.info(
        "versions of ClusterEbpfPrograms live here",
        extra={"namespace": names.system_namespace(), "workers": count, "nodeWriters": writers},
    )


@kopf.on.cleanup()
async def cleanup(**_: Any) -> None:
    STATE.queue.stop()
    STATE.nodes.stop()
    STATE.cache.stop()
    for task in STATE.tasks:
        task.cancel()
    await asyncio.gather(*STATE.tasks, return_exceptions=True)


def _soon(callback: Any, *args: Any) -> None:
    """Runs `callback` on the event loop: watch hooks are called on the watches' threads."""
    STATE.loop.call_soon_threadsafe(callback, *args)


async def _programs_at_start(custom: CustomObjectsApi) -> set[ProgramKey]:
    """Every program there is, LISTed once (again after a failure: nothing is written without it)."""
    while True:
        try:
            found: set[ProgramKey] = set()
            for kind in kinds.ALL:
                listed = await asyncio.to_thread(
                    custom.list_cluster_custom_object, names.GROUP, names.VERSION, kind.plural
                )
                found |= {
                    kind.key(o["metadata"].get("namespace"), o["metadata"]["name"]) for o in listed["items"]
                }
            return found
        except Exception:
            log.warning("listing the programs failed; retrying", exc_info=True)
            await asyncio.sleep(1)


async def _open_when_seen(custom: CustomObjectsApi) -> None:
    """Opens the node writer once the caches are synced and every program that existed at start was
    reconciled: before that, the desired table lacks programs, and writing it would unload them."""
    existing = await _programs_at_start(custom)
    await asyncio.to_thread(STATE.cache.wait_synced)
    for key in existing:
        STATE.queue.add(key)
    while not STATE.controller.seen(existing):
        await asyncio.sleep(0.05)
    log.info("every program reconciled once: writing node states", extra={"programs": len(existing)})
    STATE.open.set()
    for node in set(STATE.cache.agents.snapshot()) | set(STATE.cache.states.snapshot()):
        STATE.nodes.add(node)


async def write_node(node: str) -> None:
    await STATE.open.wait()
    loop = asyncio.get_running_loop()
    # One wait for the whole fleet, not one per node: once the table has been changing for
    # MAX_COALESCE_SECONDS, every queued node is written at once, without waiting again. A node
    # queued with nothing to write (its agent's status changed, say) waits for nothing.
    while node not in STATE.leading and STATE.writer.needs_write(node):
        now = loop.time()
        if now - STATE.last_desired_change >= QUIET_SECONDS:
            STATE.dirty_since = None
            break
        if STATE.dirty_since is not None and now - STATE.dirty_since >= MAX_COALESCE_SECONDS:
            break
        await asyncio.sleep(0.05)
    STATE.leading.discard(node)
    await asyncio.to_thread(STATE.writer.write, node)


async def _post(program: dict[str, Any], kind: str, reason: str, message: str) -> None:
    await asyncio.to_thread(events.post, STATE.controller.core, program, kind, reason, message)


async def reconcile(key: ProgramKey) -> None:
    STATE.last_reconciled[key] = asyncio.get_running_loop().time()
    with METRICS.reconcile_seconds.time():
        outcome = await asyncio.to_thread(STATE.controller.reconcile, key)
    log.debug("reconciled", extra={"program": str(key), "ready": outcome.ready_after})
    METRICS.observe(key, outcome)
    if outcome.hold:
        STATE.queue.add(key, outcome.hold)  # its status was held back: written then, if still news
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
    elif reason not in (None, reasons.PROGRESSING):
        await _post(program, "Warning", reason or "Failed", message)


def _new(type: str | None, body: kopf.Body, meta: kopf.Meta) -> bool:
    """A program just created: added while watched, or listed before anything reconciled it."""
    if meta.get("deletionTimestamp"):
        return False
    return type == "ADDED" or (type is None and not body.get("status"))


def _post_soon(program: dict[str, Any], kind: str, reason: str, message: str) -> None:
    """Posts an event beside the work, not before it (a task of its own, kept until done)."""
    task = asyncio.create_task(_post(program, kind, reason, message))
    STATE.posting.add(task)
    task.add_done_callback(STATE.posting.discard)


def _key(resource: kopf.Resource, namespace: str | None, name: str) -> ProgramKey:
    return kinds.by_plural(resource.plural).key(namespace, name)


def _forget(key: ProgramKey) -> None:
    for users in STATE.config_map_users.values():
        users.discard(key)


def _queue_every_program() -> None:
    for key in STATE.programs:
        STATE.queue.add(key)


def report_interval(nodes: int) -> float:
    """How often agents' reports may wake a program that runs on `nodes` nodes."""
    return min(REPORT_INTERVAL_SECONDS, max(MIN_REPORT_INTERVAL_SECONDS, nodes * REPORT_SECONDS_PER_NODE))


def _queue_programs(keys: Collection[ProgramKey]) -> None:
    now = asyncio.get_running_loop().time()
    for key in keys:
        if key in STATE.programs:
            interval = report_interval(STATE.controller.targeted(key))
            last = STATE.last_reconciled.get(key, now - interval)
            STATE.queue.add(key, max(0.0, last + interval - now))


def _queue_namespace(name: str) -> None:
    # Labels pick a ClusterEbpfProgram's namespaces; an annotation caps an EbpfProgram's maps.
    for key in STATE.programs:
        if key.kind == names.CLUSTER_PROGRAM_KIND or key.namespace == name:
            STATE.queue.add(key)


def _node_state_changed(node: str) -> None:
    STATE.node_state_changes += 1  # deletions waiting on their nodes look again
    STATE.nodes.add(node)


def _queue_nodes(nodes: Collection[str]) -> None:
    if nodes:
        now = asyncio.get_running_loop().time()
        quiet = now - STATE.last_desired_change >= QUIET_SECONDS
        if quiet and len(nodes) <= LEADING_MAX_NODES:
            STATE.leading |= set(nodes)
        # A change after a quiet second starts a new coalescing window: the last one may never have
        # been closed (its writes were all leading ones), and its start would cut this one short.
        if quiet or STATE.dirty_since is None:
            STATE.dirty_since = now
        STATE.last_desired_change = now
    for node in nodes:
        # A leading change is written at once: not even the queue's own short wait.
        STATE.nodes.add(node, 0.0 if node in STATE.leading else None)


@kopf.on.event(names.GROUP, names.VERSION, names.PROGRAM_PLURAL)
@kopf.on.event(names.GROUP, names.VERSION, names.CLUSTER_PROGRAM_PLURAL)
async def program_event(
    resource: kopf.Resource,
    namespace: str | None,
    name: str,
    spec: dict[str, Any],
    meta: kopf.Meta,
    type: str | None,
    body: kopf.Body,
    **_: Any,
) -> None:
    key = _key(resource, namespace, name)
    # Every event, status writes included: reconciles read the program from here, not the API.
    STATE.controller.programs.observed(key, None if type == "DELETED" else dict(body))
    if type != "DELETED":
        seen = (meta.get("uid"), meta.get("generation"), bool(meta.get("deletionTimestamp")))
        if STATE.seen.get(key) == seen:
            return  # a status or metadata write: nothing the reconcile reads changed
        if _new(type, body, meta) and STATE.seen.get(key, (None,))[0] != meta.get("uid"):
            _post_soon(dict(body), "Normal", "Accepted", ACCEPTED_MESSAGE)
        STATE.seen[key] = seen
    _forget(key)
    if type == "DELETED":
        STATE.programs.discard(key)
        STATE.seen.pop(key, None)
        STATE.noted.pop(key, None)
        STATE.last_reconciled.pop(key, None)
        METRICS.forget(key)
    else:
        STATE.programs.add(key)
        if ref := config_map_ref(spec):  # C or bytecode: editing the ConfigMap rolls the program
            ref_namespace = kinds.of(key).config_map_namespace(key, spec)
            STATE.config_map_users[(ref_namespace, ref["name"])].add(key)
    STATE.controller.config_maps.name({where for where, users in STATE.config_map_users.items() if users})
    # A new program or generation, at once: the events that follow it (kopf's own patches, status
    # writes) are filtered above, so there is nothing of its own to wait for.
    STATE.queue.add(key, 0.0)


@kopf.on.event("", "v1", "configmaps")
async def config_map_event(namespace: str, name: str, body: kopf.Body, type: str | None, **_: Any) -> None:
    STATE.controller.config_maps.observed(namespace, name, None if type == "DELETED" else dict(body))
    for key in STATE.config_map_users.get((namespace, name), ()):
        STATE.queue.add(key)


# Level-triggered backstop, and how a silent agent gets noticed when nothing else changes.
RESYNC_SECONDS = float(os.environ.get("BPFLEET_RESYNC_SECONDS", "60"))
# A deletion waits on its nodes inside its handler, looking at the watch cache every poll when an
# agent reported and every recheck when none did, for DELETE_WAIT_SECONDS before it hands back to
# kopf for a retry (one write of the object each time).
DELETE_POLL_SECONDS = 0.5
DELETE_RECHECK_SECONDS = 1.0  # even with no report: a silent agent's grace period runs out
DELETE_WAIT_SECONDS = 20.0


# The first tick an interval after a program is seen: its own event has just queued it.
@kopf.timer(
    names.GROUP, names.VERSION, names.PROGRAM_PLURAL, interval=RESYNC_SECONDS, initial_delay=RESYNC_SECONDS
)
@kopf.timer(
    names.GROUP,
    names.VERSION,
    names.CLUSTER_PROGRAM_PLURAL,
    interval=RESYNC_SECONDS,
    initial_delay=RESYNC_SECONDS,
)
async def resync(resource: kopf.Resource, namespace: str | None, name: str, **_: Any) -> None:
    STATE.queue.add(_key(resource, namespace, name))


@kopf.on.delete(names.GROUP, names.VERSION, names.PROGRAM_PLURAL)
@kopf.on.delete(names.GROUP, names.VERSION, names.CLUSTER_PROGRAM_PLURAL)
async def program_deleted(
    resource: kopf.Resource, namespace: str | None, name: str, body: kopf.Body, meta: kopf.Meta, **_: Any
) -> None:
    key = _key(resource, namespace, name)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + DELETE_WAIT_SECONDS
    # The agents' reports land in the watch cache: look there again and again, in memory, rather
    # than retry through kopf, which writes the object at every retry (at 50 programs deleted at
    # once, one write per program per second, all the while the fleet unloads).
    seen, looked = -1, 0.0
    while True:
        quiet = seen == STATE.node_state_changes and loop.time() - looked < DELETE_RECHECK_SECONDS
        if quiet and loop.time() < deadline:
            await asyncio.sleep(DELETE_POLL_SECONDS)  # no agent reported since the last look
            continue
        seen, looked = STATE.node_state_changes, loop.time()
        result = await asyncio.to_thread(STATE.controller.teardown, key, meta.get("deletionTimestamp"))
        if result.given_up:
            message = deletion.orphan_warning(key, result.given_up, DELETE_GRACE_SECONDS)
            await _post(dict(body), "Warning", reasons.AGENT_SILENT_ON_DELETE, message)
        if not result.waiting:
            break
        if loop.time() >= deadline:
            waiting = ", ".join(result.waiting[:10]) + (" ..." if len(result.waiting) > 10 else "")
            raise kopf.TemporaryError(
                f"waiting for the agents on {len(result.waiting)} nodes to unload: {waiting}", delay=1
            )
        await asyncio.sleep(DELETE_POLL_SECONDS)
    await _post(dict(body), "Normal", "Deleted", "unloaded from every node")
