"""Reconciles one program, of either kind: its version object, which version each of its nodes
should run (rollout.py), then its status from the nodes' reports. Level-triggered and idempotent.
Reads come from the watch caches (cluster_cache.py). What the nodes should run is written as the
program's placement (placement.py, placement_writer.py: one write for every node) and, where a node
must differ from it, as entries of the desired table (desired.py), which the node writer
(node_writer.py) turns into EbpfNodeState specs, one write per node for every program at once.
"""

from __future__ import annotations

import base64
import datetime
import logging
import os
import threading
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import Any

from kubernetes.client import CoreV1Api, CustomObjectsApi
from kubernetes.client.exceptions import ApiException

from bpfleet_api import names, patching, reasons, selectors
from bpfleet_operator import aggregate, deletion, fanout, kinds, placement, rollout, tenancy
from bpfleet_operator.cluster_cache import ClusterCache
from bpfleet_operator.desired import DesiredTable, entry
from bpfleet_operator.kinds import ProgramKey
from bpfleet_operator.placement_writer import PlacementWriter
from bpfleet_operator.sources import SourceError, resolve
from bpfleet_operator.version_store import ListVersions, VersionRefused, VersionStore
from bpfleet_operator.watched import ConfigMapBodies, ProgramBodies

log = logging.getLogger(__name__)

# How long a deletion waits for a silent agent to unload before it completes without it.
DELETE_GRACE_SECONDS = float(os.environ.get("BPFLEET_DELETE_GRACE_SECONDS", "300"))
# How long a new generation's first status may wait for more than "Progressing" to say (_held).
PROGRESS_HOLD_SECONDS = 0.5


def _ready_condition(status: dict[str, Any] | None) -> tuple[str | None, str | None]:
    for cond in (status or {}).get("conditions") or []:
        if cond.get("type") == "Ready":
            return cond.get("status"), cond.get("reason")
    return None, None


@dataclass(frozen=True)
class Teardown:
    """Where a deleted program still waits for an agent, and where it gave up waiting."""

    waiting: list[str]  # nodes whose agent has not unloaded it yet
    given_up: list[str]  # nodes whose silent agent outlasted the grace period: may still run it


@dataclass
class Outcome:
    """What a reconcile did, for events and tests."""

    status_written: bool = False
    ready_before: tuple[str | None, str | None] = (None, None)
    ready_after: tuple[str | None, str | None] = (None, None)
    status: dict[str, Any] | None = None
    notes: tuple[str, ...] = ()
    hold: float = 0.0  # the status was held back: reconcile again in this many seconds


class ProgramController:
    def __init__(
        self,
        core: CoreV1Api,
        custom: CustomObjectsApi,
        cache: ClusterCache,
        desired: DesiredTable,
        nodes_changed: Callable[[Collection[str]], None],
        list_versions: ListVersions,
        placements: PlacementWriter,
    ) -> None:
        self.core, self.custom, self.cache, self.desired = core, custom, cache, desired
        self.nodes_changed = nodes_changed
        self.placements = placements
        self._targeted: dict[ProgramKey, int] = {}  # how many nodes each program targets
        self.versions = VersionStore(custom, list_versions)
        # What kopf's watches delivered (the handlers feed them): reads without a round trip.
        self.programs = ProgramBodies()
        self.config_maps = ConfigMapBodies(self._get_config_map)
        # The status last written, by program and uid: the watch may not show it yet.
        self._statuses: dict[tuple[ProgramKey, str], dict[str, Any]] = {}
        # When a generation's first status, Progressing, was held back (see _held).
        self._progressing: dict[tuple[ProgramKey, str, int], float] = {}
        self._lock = threading.Lock()
        self.reconciled: set[ProgramKey] = set()  # programs reconciled at least once since start
        self._given_up: dict[ProgramKey, set[str]] = {}  # deletions' warned nodes, warned once

    # -- reads --------------------------------------------------------------------------------

    def get_program(self, key: ProgramKey) -> dict[str, Any] | None:
        """The program as its watch last showed it; read from the API server when not seen yet."""
        watched = self.programs.get(key)
        if watched is not None:
            return dict(watched)
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

    def _get_config_map(self, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            found = self.core.read_namespaced_config_map(name, namespace)
        except ApiException as e:
            if e.status == 404:
                return None
            raise
        serialized: dict[str, Any] = self.core.api_client.sanitize_for_serialization(found)
        return serialized  # the JSON form, as a watch event has it

    def read_config_map(self, namespace: str, name: str) -> dict[str, str] | None:
        found = self.config_maps.read(namespace, name)
        return None if found is None else dict(found.get("data") or {})

    def read_config_map_binary(self, namespace: str, name: str) -> dict[str, bytes] | None:
        found = self.config_maps.read(namespace, name)
        if found is None:
            return None
        return {key: base64.b64decode(value) for key, value in (found.get("binaryData") or {}).items()}

    def _mark(self, key: ProgramKey) -> None:
        with self._lock:
            self.reconciled.add(key)

    def seen(self, keys: Collection[ProgramKey]) -> bool:
        """Whether every one of `keys` was reconciled since the operator started."""
        with self._lock:
            return all(k in self.reconciled for k in keys)

    # -- reconcile ----------------------------------------------------------------------------

    def targeted(self, key: ProgramKey) -> int:
        """How many nodes the program targeted when last reconciled."""
        with self._lock:
            return self._targeted.get(key, 0)

    def forget(self, key: ProgramKey) -> None:
        """The program is gone or going: no node should run it any more."""
        self.placements.remove(key)
        self.nodes_changed(self.desired.drop_program(key))
        with self._lock:
            self._targeted.pop(key, None)

    def reconcile(self, key: ProgramKey) -> Outcome:
        program = self.get_program(key)
        if program is None or program["metadata"].get("deletionTimestamp"):
            self.forget(key)  # deletion itself is the finalizer handler's job
            if program is None:
                self.versions.forget(key)
                with self._lock:
                    self._statuses = {k: v for k, v in self._statuses.items() if k[0] != key}
                    self._progressing = {k: v for k, v in self._progressing.items() if k[0] != key}
            self._mark(key)
            return Outcome()
        try:
            return self._reconcile(key, program)
        finally:
            self._mark(key)

    def _reconcile(self, key: ProgramKey, program: dict[str, Any]) -> Outcome:
        kind = kinds.of(key)
        generation = program["metadata"]["generation"]
        previous = self._last_status(key, program)
        spec = program["spec"]
        view = self.cache.view()
        try:
            if problems := tenancy.problems(kind, spec):
                raise SourceError(reasons.INVALID_SPEC, "; ".join(problems))
            source = resolve(
                kind.config_map_namespace(key, spec),
                spec,
                self.read_config_map,
                origin_namespace=not kind.namespaced,
                read_binary=self.read_config_map_binary,
            )
            reach = tenancy.reach(kind, key.namespace, spec, view.namespaces)
            version = fanout.Version(program, source, kind=kind, reach=reach).body()
            self.versions.ensure(key, version)
        except (SourceError, VersionRefused) as e:
            # What runs keeps running until the spec is fixed: after a restart, what the nodes have.
            if not self.desired.knows(key):
                self.nodes_changed(self.desired.set_program(key, self.cache.spec_entries(key)))
            reason = e.reason if isinstance(e, SourceError) else reasons.INVALID_SPEC
            return self._write_status(
                key, program, aggregate.stalled_status(generation, reason, str(e), previous)
            )

        # A node that runs no agent gets no entry: nobody there would serve it or unload it.
        matching = fanout.targeted_nodes(spec, view.nodes)
        targeted = [n for n in matching if n in view.agents.present]
        without_agent = len(matching) - len(targeted)
        named = self.desired.program(key) if self.desired.knows(key) else self.cache.spec_entries(key)
        placed = self.placements.placed(key)
        readers = view.agents.placements
        reports = self.cache.reports(key)
        canary_selector = ((spec.get("rollout") or {}).get("canary") or {}).get("nodeSelector")
        canary = (
            {n for n in targeted if selectors.matches(canary_selector, view.nodes.get(n, {}))}
            if canary_selector is not None
            else set()
        )
        name = version["metadata"]["name"]
        running = placement.running(targeted, named, placed, readers, view.nodes)
        plan = rollout.plan(name, targeted, running, reports, spec.get("rollout"), canary)
        # One entry object per version, shared by its nodes: a reconcile of a 5,000-node program
        # would otherwise build 5,000 equal dicts.
        by_version = {v: entry(key, generation, v) for v in set(plan.assign.values())}
        entries = {n: by_version[v] for n, v in plan.assign.items()}
        placed_version = placement.placed_version(plan, targeted)
        self.placements.write(
            key, program, placement.spec(key, generation, placed_version, spec.get("nodeSelector"))
        )
        seen = self.placements.seen(key)
        own = placement.node_entries(entries, placed_version, readers, named, seen)
        self.nodes_changed(self.desired.set_program(key, own))
        with self._lock:
            self._targeted[key] = len(targeted)
        written = self.cache.spec_entries(key)
        keep = {name, placed_version, *by_version, *(e["version"] for e in written.values())}
        keep |= {p["version"] for p in (placed, seen) if p is not None}
        if plan.previous:
            keep.add(plan.previous)
        self.versions.collect(key, keep)

        status = aggregate.program_status(
            generation,
            targeted,
            entries,
            reports,
            previous,
            view.agents.silent,
            notes=reach.notes,
            without_agent=without_agent,
            rollout=plan if rollout.staged(spec.get("rollout")) else None,
        )
        status["sourceHash"] = source.sha256
        status.setdefault("rollout", None)  # a rollout spec removed: its status goes too (merge patch)
        outcome = self._write_status(key, program, status)
        outcome.notes = reach.notes
        return outcome

    def _last_status(self, key: ProgramKey, program: dict[str, Any]) -> dict[str, Any]:
        """The program's status as last written here while the watch does not show it yet, else as
        its body has it (so that a status someone else wrote is corrected)."""
        shown = program.get("status") or {}
        mine = (key, program["metadata"].get("uid", ""))
        with self._lock:
            written = self._statuses.get(mine)
            if written is not None and written == shown:
                del self._statuses[mine]  # the watch has caught up
        return written if written is not None else shown

    def _write_status(self, key: ProgramKey, program: dict[str, Any], status: dict[str, Any]) -> Outcome:
        previous = self._last_status(key, program)
        outcome = Outcome(
            ready_before=_ready_condition(previous), ready_after=_ready_condition(status), status=status
        )
        if all(previous.get(k) == v for k, v in status.items()):
            return outcome
        if hold := self._held(key, program, previous, status):
            return Outcome(ready_before=outcome.ready_before, ready_after=outcome.ready_before, hold=hold)
        kind = kinds.of(key)
        if patching.merge_patch(
            self.custom, kind.plural, kind.api_namespace(key), key.name, {"status": status}, status=True
        ):
            uid = program["metadata"].get("uid", "")
            with self._lock:
                self._statuses[(key, uid)] = patching.merged(previous, status)
                self._progressing.pop((key, uid, program["metadata"]["generation"]), None)
        outcome.status_written = True
        return outcome

    def _held(
        self, key: ProgramKey, program: dict[str, Any], previous: dict[str, Any], status: dict[str, Any]
    ) -> float:
        """Seconds to hold back a new generation's first status while all it says is Progressing.
        On a node or a few, Ready comes within a tenth of a second: one status write instead of
        two, and the API server is not writing a status beside the node's spec the agent waits
        for. Anything else (a failure, Ready, a later generation's progress) is written at once."""
        generation = program["metadata"]["generation"]
        if status.get("observedGeneration") != generation or previous.get("observedGeneration") == generation:
            return 0.0
        if _ready_condition(status) != ("False", reasons.PROGRESSING):
            return 0.0
        mark = (key, program["metadata"].get("uid", ""), generation)
        now = time.monotonic()
        with self._lock:
            first = self._progressing.setdefault(mark, now)
            if now - first >= PROGRESS_HOLD_SECONDS:
                del self._progressing[mark]
                return 0.0
        return PROGRESS_HOLD_SECONDS - (now - first)  # not first + hold - now: that rounds past the hold

    def teardown(self, key: ProgramKey, deleted_at: str | None) -> Teardown:
        """Removes the program from every node's spec, then waits for the nodes whose EbpfNodeState
        still lists it: a live agent is unloading it there. A node that is gone or runs no agent is
        never waited for; one whose agent is silent, DELETE_GRACE_SECONDS at most."""
        self.forget(key)
        view = self.cache.view()
        now = datetime.datetime.now(datetime.UTC)
        waiting, given_up = deletion.split(
            self.cache.holding(key), view.nodes, view.agents, deleted_at, now, DELETE_GRACE_SECONDS
        )
        with self._lock:
            warned = self._given_up.setdefault(key, set())
            new = [n for n in given_up if n not in warned]  # once: deletion may be retried again
            warned.update(new)
            if not waiting:
                self._given_up.pop(key, None)
        return Teardown(waiting, new)
