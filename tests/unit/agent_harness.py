"""An agent on the in-memory kernel, with the API as a recorder: its EbpfNodeState in a list, the
version objects it reads in a dict, and every status write kept (and applied, as the API would)."""

from __future__ import annotations

from typing import Any

from bpfleet_api import names
from bpfleet_api.errors import ApiError
from node_agent.agent import Agent
from node_agent.compile_pool import CompilePool
from node_agent.model import Trust
from node_agent.reconcile import PassResult, Reconciler
from tests.unit.builders import hashed, node_state
from tests.unit.fakes import FakeBackend, FakeCgroups, offline_api

TRUST = Trust("bpfleet-system")


class Listed:
    def __init__(self, objects: list[dict[str, Any]]) -> None:
        self.items = objects

    def objects(self) -> list[dict[str, Any]]:
        return list(self.items)


class Labelled:
    """The watch of the node's own Node, reduced to its labels."""

    def __init__(self, node: str, labels: dict[str, str]) -> None:
        self.node, self.labels = node, labels

    def get(self, name: str) -> dict[str, str] | None:
        return self.labels if name == self.node else None


class FakeApi:
    """The CustomObjectsApi calls the agent makes: GET of versions, patches of its node's status."""

    def __init__(self) -> None:
        self.versions: dict[tuple[str, str], dict[str, Any]] = {}
        self.reads: list[tuple[str, str]] = []
        self.writes: list[tuple[str, dict[str, Any]]] = []  # (node, status)
        self.down = False

    def get_namespaced_custom_object(self, group, version, namespace, plural, name, **_):
        assert plural == names.VERSION_PLURAL
        self.reads.append((namespace, name))
        if self.down:
            raise ApiError(503, "Service Unavailable")
        if (namespace, name) not in self.versions:
            raise ApiError(404, "Not Found")
        return self.versions[(namespace, name)]

    def patch_cluster_custom_object_status(self, group, version, plural, name, body, **_):
        assert plural == names.NODE_STATE_PROGRAMS_PLURAL
        self.writes.append((name, body["status"]))


class FakeCore:
    """The CoreV1Api call the agent makes: its own Node, there unless `gone`."""

    def __init__(self) -> None:
        self.gone = False

    def read_node(self, name: str, **_: Any) -> Any:
        if self.gone:
            raise ApiError(404, "Not Found")
        return {"metadata": {"name": name}}


class Node:
    """One node: its agent, its EbpfNodeState and the versions its entries name."""

    def __init__(
        self,
        kernel: FakeBackend | None = None,
        node: str = "node-a",
        pods: list[dict[str, Any]] | None = None,
        cgroups: set[str] | None = None,
        pool: CompilePool | None = None,
    ) -> None:
        self.kernel = kernel or FakeBackend()
        self.name = node
        # Without a pool, builds run at once inside the pass.
        reconciler = Reconciler(self.kernel, FakeCgroups(cgroups or set()), pool=pool)
        self.agent = Agent(offline_api(), node, reconciler, trust=TRUST)
        self.api = FakeApi()
        self.agent.custom = self.api  # type: ignore[assignment]
        self.core = FakeCore()
        self.agent.core = self.core  # type: ignore[assignment]
        self.states: list[dict[str, Any]] = []
        self.agent.programs = Listed(self.states)  # type: ignore[assignment]
        self.agent.pods = Listed(pods or [])  # type: ignore[assignment]
        self.placements: list[dict[str, Any]] = []  # what its watch of placements has
        self.agent.placements = Listed(self.placements)  # type: ignore[assignment]
        self.labels: dict[str, str] = {}  # its Node's
        self.agent.node_labels = Labelled(node, self.labels)  # type: ignore[assignment]
        self.generation = 0

    def serve(self, *programs: dict[str, Any], store: bool = True) -> dict[str, Any]:
        """Makes the node's spec these versions (stored in the API unless `store` is False)."""
        self.generation += 1
        status = self.states[0].get("status") if self.states else None
        state = node_state(list(programs), self.name, self.generation, status)
        for version in programs:
            if store:
                meta = hashed(version)["metadata"]
                self.api.versions[(meta["namespace"], meta["name"])] = version
        self.states[:] = [state]
        return state

    def reconcile(self) -> PassResult:
        """One pass; its status write, if any, lands on the state as the API server would do."""
        result = self.agent.reconcile_once()
        assert all(node == self.name for node, _ in self.api.writes)  # only ever its own node's
        if self.api.writes and self.states:
            self.states[0]["status"] = self.api.writes[-1][1]
        return result

    @property
    def status(self) -> dict[str, Any]:
        return self.states[0].get("status") or {}

    def entry(self, name: str) -> dict[str, Any]:
        [found] = [e for e in self.status.get("programs", []) if e["name"] == name]
        return found
