"""Simulated agents for the fleet benchmark: many nodes in one process, each with its Node and
BpfleetNode, reporting its EbpfNodeState status through the agent's own code.

What is the agent's: reading entries (intake.parse_entries) and the placements its Node's labels
match (placements.placed_entries, merged with the spec's as the agent merges them), checking a
version's hash and trust rules (model.check_hash, NodeProgram.from_entry), every byte of status
(status.program_entry, refused_entry, node_state_status), with one write per pass only when it
changed, and the client those reads and writes go through (bpfleet_api.objects on the thin
client). What is simulated: the kernel (every program loads; each entry's pods are all
attached) and the watches (one of node states and one of placements for the whole fleet rather
than one each per node; the API writes are the same). The labels each node matches placements
with are the ones it registered.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from kubernetes.client import ApiClient, CoreV1Api, CustomObjectsApi, V1Node, V1ObjectMeta
from kubernetes.client.exceptions import ApiException

from bpfleet_api import conditions, names, patching, reasons
from bpfleet_api.errors import ApiError
from bpfleet_api.informer import Informer
from bpfleet_api.objects import CustomObjects
from bpfleet_api.rest import RestClient
from bpfleet_api.status_patch import patch_status
from node_agent.errors import InvalidSpec
from node_agent.intake import Entry, parse_entries
from node_agent.kernel.backend import LoadedProgram, ProgramRef
from node_agent.model import EntryKey, NodeProgram, Trust, check_hash, version_namespace
from node_agent.placements import merged, placed_entries
from node_agent.reconcile import ATTACHED, PodReport, ProgramReport
from node_agent.status import node_state_status, program_entry, refused_entry

FLEET_LABEL = "bpfleet.io/fleet-bench"
ATTACH_TYPES = ("CgroupSkb", "CgroupSockAddr", "CgroupSock", "CgroupSysctl", "CgroupDevice", "Tc", "Xdp")


def _state_watch(api: RestClient, changed: Any) -> Informer[dict[str, Any]]:
    """The fleet's EbpfNodeStates, telling which node's changed (a relist tells every one)."""

    def tell(kind: str, _key: str, _before: Any, after: Any) -> None:
        if after is not None:
            changed(after)

    path = f"/apis/{names.GROUP}/{names.VERSION}/{names.NODE_STATE_PROGRAMS_PLURAL}"
    return Informer(api, path, listener=tell)


class SimulatedFleet:
    def __init__(
        self,
        api: ApiClient,
        nodes: list[str],
        pods_per_program: int = 10,
        workers: int = 8,
        agent_reads: bool = False,
        *,
        rest: RestClient,
    ) -> None:
        self.api, self.nodes, self.pods = api, nodes, pods_per_program
        self.custom, self.core = CustomObjectsApi(api), CoreV1Api(api)
        self.agent_objects = CustomObjects(rest)  # what the agents read and write through
        self.workers = workers
        # One version read per process (False), or one per simulated node as real agents do (True).
        self.agent_reads = agent_reads
        self.trust = Trust()
        self._versions: dict[tuple[str, str], Mapping[str, Any] | Exception] = {}
        self._version_locks: dict[tuple[str, str], threading.Lock] = {}
        self._parsed: dict[tuple[EntryKey, int, tuple[str, str]], NodeProgram] = {}
        self._lock = threading.Condition()
        self._dirty: dict[str, dict[str, Any]] = {}
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._watch = _state_watch(rest, self._changed)
        self._placements = Informer(
            rest,
            f"/apis/{names.GROUP}/{names.VERSION}/{names.PLACEMENT_PLURAL}",
            on_change=self._placements_changed,
        )
        # What the placements give a node with these labels, until they change (every simulated
        # node has the same labels: parsed once, not once per node).
        self._placed: dict[tuple[tuple[str, str], ...], list[Entry]] = {}
        self._fleet = set(nodes)
        self.status_writes = 0

    def states(self) -> list[dict[str, Any]]:
        """Every EbpfNodeState as the fleet's watch has it: what the bench counts, without LISTing
        thousands of objects every few seconds (which slowed the API server it measures)."""
        return self._watch.objects()

    # -- joining and leaving -----------------------------------------------------------------------

    def register(self, progress: Any = None) -> None:
        """Each node: its Node, and the BpfleetNode its agent makes when it starts."""
        with ThreadPoolExecutor(self.workers) as pool:
            for done, _ in enumerate(pool.map(self._join, self.nodes), 1):
                if progress and done % 500 == 0:
                    progress(done)

    def labels(self, node: str) -> dict[str, str]:
        return {FLEET_LABEL: "true"}

    def _join(self, node: str) -> None:
        meta = V1ObjectMeta(name=node, labels=self.labels(node))
        try:
            uid = self.core.create_node(V1Node(metadata=meta)).metadata.uid
        except ApiException as e:
            if e.status != 409:
                raise
            uid = self.core.read_node(node).metadata.uid
        owner = [{"apiVersion": "v1", "kind": "Node", "name": node, "uid": uid}]
        body = {
            "apiVersion": names.API_VERSION,
            "kind": names.NODE_STATE_KIND,
            "metadata": {"name": node, "ownerReferences": owner},
        }
        try:
            self.custom.create_cluster_custom_object(
                names.GROUP, names.VERSION, names.NODE_STATE_PLURAL, body
            )
        except ApiException as e:
            if e.status != 409:
                raise
        now = conditions.now()
        status = {
            "kernel": "simulated",
            "btf": True,
            "kprobes": False,
            "kernelHeaders": True,
            "attachTypes": dict.fromkeys(ATTACH_TYPES, True),
            "agentStartedAt": now,
            "readsPlacementsSince": now,
            "lastHeartbeat": now,
        }
        patching.merge_patch(
            self.custom, names.NODE_STATE_PLURAL, None, node, {"status": status}, status=True
        )

    def heartbeat(self) -> None:
        with ThreadPoolExecutor(self.workers) as pool:
            list(pool.map(self._beat, self.nodes))

    def _beat(self, node: str) -> None:
        body = {"status": {"lastHeartbeat": conditions.now()}}
        patching.merge_patch(self.custom, names.NODE_STATE_PLURAL, None, node, body, status=True)

    def remove(self) -> None:
        """Deletes the Nodes: garbage collection takes their BpfleetNodes and EbpfNodeStates."""
        with ThreadPoolExecutor(self.workers) as pool:
            list(pool.map(self._leave, self.nodes))

    def _leave(self, node: str) -> None:
        try:
            self.core.delete_node(node)
        except ApiException as e:
            if e.status != 404:
                raise

    # -- reporting ---------------------------------------------------------------------------------

    def start(self) -> None:
        self._placements.start()
        self._placements.synced.wait(30)  # as an agent: no pass before the placements are known
        self._watch.start()
        for i in range(self.workers):
            thread = threading.Thread(target=self._report_loop, name=f"agent-{i}", daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop(self) -> None:
        self._stop.set()
        self._watch.stop()
        self._placements.stop()
        with self._lock:
            self._lock.notify_all()
        for thread in self._threads:
            thread.join(5)

    def _changed(self, state: dict[str, Any]) -> None:
        name = state["metadata"]["name"]
        if name not in self._fleet:
            return
        with self._lock:
            self._dirty[name] = state  # the latest only: a burst of events is one pass
            self._lock.notify()

    def _placements_changed(self) -> None:
        with self._lock:
            self._placed.clear()
        for state in self._watch.objects():  # every node may run something else now
            self._changed(state)

    def _recheck(self, node: str) -> None:
        latest = [s for s in self._watch.objects() if s["metadata"]["name"] == node]
        if latest:
            self._changed(latest[0])

    def _report_loop(self) -> None:
        while not self._stop.is_set():
            with self._lock:
                while not self._dirty and not self._stop.is_set():
                    self._lock.wait(0.5)
                if self._stop.is_set():
                    return
                _, state = self._dirty.popitem()
            try:
                self._report(state)
            except Exception as e:  # the next event of that node tries again
                print(f"simulated agent {state['metadata']['name']}: {e}", flush=True)

    def _report(self, state: dict[str, Any]) -> None:
        node = state["metadata"]["name"]
        if (state.get("spec") or {}).get("nodeName") not in (None, node):
            return
        own, _ = parse_entries(state)
        reported = [self.entry_status(e) for e in merged(self._placed_for(node), own)]
        if any(e["reason"] == reasons.SOURCE_NOT_FOUND for e in reported):
            # No watch says when a version appears: look again, as the agent does.
            timer = threading.Timer(1.0, self._recheck, (node,))
            timer.daemon = True
            timer.start()
        status = node_state_status(state["metadata"].get("generation"), reported)
        if (state.get("status") or {}) == status:
            return
        patch_status(self.agent_objects, names.NODE_STATE_PROGRAMS_PLURAL, node, status)
        with self._lock:
            self.status_writes += 1

    def _placed_for(self, node: str) -> list[Entry]:
        labels = self.labels(node)
        key = tuple(sorted(labels.items()))
        with self._lock:
            found = self._placed.get(key)
        if found is None:
            found, _ = placed_entries(self._placements.objects(), labels, self.trust)
            with self._lock:
                self._placed[key] = found
        return found

    def entry_status(self, entry: Entry) -> dict[str, Any]:
        """What the agent reports for one entry after a pass that loaded it and attached every pod."""
        try:
            program = self._program(entry)
        except InvalidSpec as e:
            return refused_entry(entry, e.reason, str(e), None)
        except LookupError:
            message = f"version object {entry.version} not found"
            return refused_entry(entry, reasons.SOURCE_NOT_FOUND, message, None)
        ref = ProgramRef(*entry.key.pins, version=entry.version[-10:])
        report = ProgramReport(
            program.namespace,
            program.name,
            entry.generation,
            ref.version,
            loaded=LoadedProgram(ref, 1, f"/sys/fs/bpf/bpfleet/{ref.namespace}/{ref.name}/{ref.version}"),
            serving_version=ref.version,
            pods=[PodReport(f"pod-{i}", f"uid-{i}", ATTACHED) for i in range(self.pods)],
            scope=program.scope,
            attach_type=program.attach_type,
            target=program.build.attach.target,
        )
        return program_entry(report, entry, entry.version)

    def _program(self, entry: Entry) -> NodeProgram:
        """The entry's version parsed: once per process for an entry and version, as an agent does
        once per node (intake.VersionReader); every simulated node parsing it again would spend the
        CPU of a thousand nodes on the two cores the benchmark measures."""
        where = (version_namespace(entry.key, self.trust), entry.version)
        if self.agent_reads:
            return NodeProgram.from_entry(entry.key, entry.generation, self._version(where), self.trust)
        parsed_key = (entry.key, entry.generation, where)
        parsed = self._parsed.get(parsed_key)
        if parsed is None:
            parsed = NodeProgram.from_entry(entry.key, entry.generation, self._version(where), self.trust)
            self._parsed[parsed_key] = parsed
        return parsed

    def _version(self, where: tuple[str, str]) -> Mapping[str, Any]:
        if self.agent_reads:
            return self._read_version(where)
        # Read once per process: the workers that want it meanwhile wait for that one read.
        with self._lock:
            lock = self._version_locks.setdefault(where, threading.Lock())
        with lock:
            cached = self._versions.get(where)
            if cached is None:
                try:
                    cached = self._read_version(where)
                except InvalidSpec as e:
                    cached = e
                self._versions[where] = cached
        if isinstance(cached, Exception):
            raise cached
        return cached

    def _read_version(self, where: tuple[str, str]) -> Mapping[str, Any]:
        """The version object, its hash checked; LookupError when it does not exist (yet)."""
        try:
            found = self.agent_objects.get_namespaced_custom_object(
                names.GROUP, names.VERSION, where[0], names.VERSION_PLURAL, where[1]
            )
        except ApiError as e:
            if e.status != 404:
                raise
            raise LookupError(where[1]) from None  # not remembered: it may appear
        check_hash(found)
        return found
