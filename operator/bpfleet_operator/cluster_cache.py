"""What the reconciles read, kept by watches (bpfleet_api.informer: stalls, 410s and failures are
caught and resumed with jittered backoff): Nodes, BpfleetNodes (agents), Namespaces,
EbpfProgramPlacements and EbpfNodeStates, with an index of the nodes' status and spec entries by
program.

Watch events call the `Hooks`: only events that change a fan-out, a program's entries or a node's
spec queue work, so that kubelets' and agents' heartbeats cost nothing but a comparison.
"""

from __future__ import annotations

import dataclasses
import datetime
import functools
import os
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from bpfleet_api import names
from bpfleet_api.informer import Informer, WatchTiming
from bpfleet_api.rest import RestClient
from bpfleet_operator import agents, kinds
from bpfleet_operator.agents import Agents
from bpfleet_operator.desired import Entry, key_of
from bpfleet_operator.fleet_events import FanoutInputs
from bpfleet_operator.kinds import ProgramKey
from bpfleet_operator.tenancy import NamespaceInfo

# An agent heartbeats every 20 s (BpfleetNode status.lastHeartbeat); after this long without one,
# its node is reported as not covered.
AGENT_SILENCE_SECONDS = float(os.environ.get("BPFLEET_AGENT_SILENCE_SECONDS", "90"))
# A view is rebuilt when a watch changed it, and at least this often (agents fall silent with time).
_VIEW_SECONDS = 1.0
# The longest wait before a failed watch is retried (full jitter, bpfleet_api/backoff.py).
OPERATOR_RETRY_CAP_SECONDS = 1.0


@dataclass(frozen=True)
class AgentInfo:
    uid: str
    heartbeat: str | None
    reads_placements: bool = False


@dataclass(frozen=True)
class Placement:
    """An EbpfProgramPlacement, reduced: its spec, and the program it places (None when its spec
    names none: not the operator's)."""

    spec: dict[str, Any]
    program: ProgramKey | None
    resource_version: str = field(default="", compare=False)


@dataclass(frozen=True)
class NodeState:
    """An EbpfNodeState, reduced: its spec entries (as listed, and by program), and its status
    entries by program. Keyed once when the watch delivers it, not at every later comparison."""

    uid: str
    spec: tuple[Entry, ...]
    status: Mapping[ProgramKey, Mapping[str, Any]]
    resource_version: str = field(default="", compare=False)

    @functools.cached_property
    def spec_by_key(self) -> dict[ProgramKey, Entry]:
        return {key_of(e): e for e in self.spec}


@dataclass(frozen=True)
class ClusterView:
    """What every reconcile reads, as of one moment."""

    nodes: dict[str, dict[str, str]]  # name -> labels
    agents: Agents  # which nodes run an agent, and which agents went silent
    namespaces: dict[str, NamespaceInfo] = field(default_factory=dict)


@dataclass
class Hooks:
    """What watch events ask for; each is called on a watch's thread."""

    fanout_changed: Callable[[], None]  # every program's targets may differ
    programs_changed: Callable[[set[ProgramKey]], None]  # these programs' entries changed
    namespace_changed: Callable[[str], None]
    node_state_changed: Callable[[str], None]  # the node's EbpfNodeState spec (or existence) changed
    agent_changed: Callable[[str], None]  # an agent appeared or went away


def _labels(obj: dict[str, Any]) -> dict[str, str]:
    return dict(obj["metadata"].get("labels") or {})


def _agent(obj: dict[str, Any]) -> AgentInfo:
    status = obj.get("status") or {}
    return AgentInfo(obj["metadata"]["uid"], status.get("lastHeartbeat"), agents.reads_placements(status))


def _placement(obj: dict[str, Any]) -> Placement:
    spec = dict(obj.get("spec") or {})
    try:
        program: ProgramKey | None = key_of(spec)
    except KeyError:
        program = None
    return Placement(spec, program, obj["metadata"].get("resourceVersion", ""))


def _namespace(obj: dict[str, Any]) -> NamespaceInfo:
    meta = obj["metadata"]
    return NamespaceInfo(dict(meta.get("labels") or {}), dict(meta.get("annotations") or {}))


def _node_state(obj: dict[str, Any]) -> NodeState:
    spec, status = obj.get("spec") or {}, obj.get("status") or {}
    return NodeState(
        obj["metadata"]["uid"],
        tuple(spec.get("programs") or ()),
        {key_of(e): e for e in status.get("programs") or ()},
        obj["metadata"].get("resourceVersion", ""),
    )


def _group_path(plural: str) -> str:
    return f"/apis/{names.GROUP}/{names.VERSION}/{plural}"


class ClusterCache:
    def __init__(self, api: RestClient, hooks: Hooks) -> None:
        self.hooks = hooks
        self._fanout = FanoutInputs()
        self._lock = threading.Lock()
        self._reports: dict[ProgramKey, dict[str, Mapping[str, Any]]] = {}  # program -> node -> status
        self._specs: dict[ProgramKey, dict[str, Entry]] = {}  # program -> node -> spec entry
        self._view: ClusterView | None = None
        self._view_at = 0.0
        # Retries after a failed watch spread over a second, not the agents' 4 s: the jitter keeps a
        # fleet from stampeding an API server that comes back, and the operator is one process.
        timing = dataclasses.replace(WatchTiming.from_env(), retry_cap=OPERATOR_RETRY_CAP_SECONDS)
        # Cluster-scoped collections: each cache is keyed by object name.
        self.nodes = Informer(api, "/api/v1/nodes", _labels, self._on_node, timing=timing)
        self.agents = Informer(
            api, _group_path(names.NODE_STATE_PLURAL), _agent, self._on_agent, timing=timing
        )
        self.namespaces = Informer(api, "/api/v1/namespaces", _namespace, self._on_namespace, timing=timing)
        self.states = Informer(
            api,
            _group_path(names.NODE_STATE_PROGRAMS_PLURAL),
            _node_state,
            self._on_node_state,
            timing=timing,
        )
        # Namespaced: keyed by namespace/name.
        self.placements = Informer(
            api, _group_path(names.PLACEMENT_PLURAL), _placement, self._on_placement, timing=timing
        )
        self._informers = (self.nodes, self.agents, self.namespaces, self.states, self.placements)

    def start(self) -> None:
        for informer in self._informers:
            informer.start()

    def stop(self) -> None:
        for informer in self._informers:
            informer.stop()

    def synced(self) -> bool:
        return all(i.synced.is_set() for i in self._informers)

    def wait_synced(self, timeout: float | None = None) -> bool:
        deadline = None if timeout is None else time.monotonic() + timeout
        for informer in self._informers:
            left = None if deadline is None else max(deadline - time.monotonic(), 0)
            if not informer.synced.wait(left):
                return False
        return True

    # -- reads ---------------------------------------------------------------------------------

    def view(self) -> ClusterView:
        """Nodes, agents and Namespaces; rebuilt only when a watch changed them or a second passed."""
        with self._lock:
            if self._view is not None and time.monotonic() - self._view_at < _VIEW_SECONDS:
                return self._view
        now = datetime.datetime.now(datetime.UTC)
        present = self.agents.snapshot()
        silent = {}
        for node, info in present.items():
            if info.heartbeat:
                seen = datetime.datetime.fromisoformat(info.heartbeat.replace("Z", "+00:00"))
                if (now - seen).total_seconds() > AGENT_SILENCE_SECONDS:
                    silent[node] = agents.silence_message(node, info.heartbeat)
        readers = frozenset(node for node, info in present.items() if info.reads_placements)
        view = ClusterView(
            self.nodes.snapshot(),
            Agents(frozenset(present), silent, readers),
            self.namespaces.snapshot(),
        )
        with self._lock:
            self._view, self._view_at = view, time.monotonic()
        return view

    def reports(self, key: ProgramKey) -> dict[str, Mapping[str, Any]]:
        """node -> the status entry its EbpfNodeState has for the program."""
        with self._lock:
            return dict(self._reports.get(key, {}))

    def placement(self, key: ProgramKey) -> Placement | None:
        """The program's EbpfProgramPlacement, as the watch shows it."""
        namespace = kinds.of(key).node_namespace(key)
        found = self.placements.get(f"{namespace}/{names.placement_name(key.kind, key.name)}")
        return found if found is not None and found.program == key else None

    def spec_entries(self, key: ProgramKey) -> dict[str, Entry]:
        """node -> the spec entry its EbpfNodeState has for the program (as last written)."""
        with self._lock:
            return dict(self._specs.get(key, {}))

    def holding(self, key: ProgramKey) -> set[str]:
        """The nodes whose EbpfNodeState lists the program, in its spec or its status."""
        with self._lock:
            return set(self._reports.get(key, ())).union(self._specs.get(key, ()))

    def programs_in_states(self) -> set[ProgramKey]:
        with self._lock:
            return set(self._reports) | set(self._specs)

    # -- watch events --------------------------------------------------------------------------

    def _stale(self) -> None:
        with self._lock:
            self._view = None

    def _on_node(self, kind: str, name: str, before: Any, after: dict[str, str] | None) -> None:
        if self._fanout.node_event(name, after, deleted=after is None):
            self._stale()
            self.hooks.fanout_changed()

    def _on_agent(self, kind: str, name: str, before: AgentInfo | None, after: AgentInfo | None) -> None:
        view = self._view
        was_silent = view is not None and name in view.agents.silent
        self._stale()
        if self._fanout.agent_event(name, deleted=after is None, was_silent=was_silent):
            self.hooks.fanout_changed()
        if (before is None) != (after is None) or (before and after and before.uid != after.uid):
            self.hooks.agent_changed(name)
        elif before and after and before.reads_placements != after.reads_placements:
            self.hooks.fanout_changed()  # which programs its spec must name changed

    def _on_placement(self, kind: str, name: str, before: Placement | None, after: Placement | None) -> None:
        # The echo of the operator's own write: the node entries it made unnecessary can go.
        placed = {p.program for p in (before, after) if p is not None and p.program is not None}
        if placed:
            self.hooks.programs_changed(placed)

    def _on_namespace(self, kind: str, name: str, before: Any, after: Any) -> None:
        self._stale()
        self.hooks.namespace_changed(name)

    def _on_node_state(self, kind: str, name: str, before: NodeState | None, after: NodeState | None) -> None:
        old_status = before.status if before else {}
        new_status = after.status if after else {}
        old_spec = before.spec_by_key if before else {}
        new_spec = after.spec_by_key if after else {}
        statuses = old_status.keys() | new_status.keys()
        reported = {k for k in statuses if old_status.get(k) != new_status.get(k)}
        written = {k for k in old_spec.keys() | new_spec.keys() if old_spec.get(k) != new_spec.get(k)}
        with self._lock:
            for key in reported | written:
                _put(self._reports, key, name, new_status.get(key))
                _put(self._specs, key, name, new_spec.get(key))
        # The echo of the operator's own spec write concerns a program only where it replaced or
        # removed an entry: the version it named may be unused now (VersionStore.collect).
        replaced = {k for k in written if k in old_spec}
        if reported or replaced:
            self.hooks.programs_changed(reported | replaced)
        if before is None or after is None or before.spec != after.spec:
            self.hooks.node_state_changed(name)


def _put(index: dict[ProgramKey, dict[str, Any]], key: ProgramKey, node: str, value: Any) -> None:
    if value is None:
        by_node = index.get(key)
        if by_node is not None:
            by_node.pop(node, None)
            if not by_node:
                del index[key]
    else:
        index.setdefault(key, {})[node] = value
