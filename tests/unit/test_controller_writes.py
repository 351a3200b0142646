"""The controller's and the node writer's API writes, against stubs: a version the API server
refuses goes to status once (not retried for ever), what a tenant may not do never becomes a
version, nodes without an agent get no entry, and the node writer writes each node once for many
programs and not at all when the watch shows what it would write. tests/apiserver runs the real
thing."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
from kubernetes.client.exceptions import ApiException

from bpfleet_api import names, reasons
from bpfleet_operator import controller as controller_module
from bpfleet_operator.agents import Agents
from bpfleet_operator.cluster_cache import AgentInfo, ClusterView, NodeState
from bpfleet_operator.controller import ProgramController
from bpfleet_operator.desired import DesiredTable, entry
from bpfleet_operator.kinds import CLUSTER, NAMESPACED, ProgramKey
from bpfleet_operator.metrics import OperatorMetrics
from bpfleet_operator.node_writer import NodeWriter
from bpfleet_operator.placement_writer import PlacementWriter
from bpfleet_operator.tenancy import NamespaceInfo

SPEC = {
    "source": {"inline": "int f(struct __sk_buff *skb) { return 1; }"},
    "function": "f",
    "attach": {"type": "CgroupSkb", "direction": "Egress"},
    "podSelector": {},
}


def refusal(status: int, message: str) -> ApiException:
    e = ApiException(status=status, reason="Refused")
    e.body = json.dumps({"kind": "Status", "message": message})
    return e


class StubCustom:
    """Answers what reconcile reads; refuses every version create with `refuse` (None: accepts)."""

    def __init__(self, program: dict[str, Any], refuse: ApiException | None) -> None:
        self.program, self.refuse = program, refuse
        self.statuses: list[dict[str, Any]] = []
        self.created: list[dict[str, Any]] = []

    def get_namespaced_custom_object(self, *_: Any) -> dict[str, Any]:
        return self.program

    def get_cluster_custom_object(self, *_: Any) -> dict[str, Any]:
        return self.program

    def create_namespaced_custom_object(self, *args: Any) -> None:
        if self.refuse is not None:
            raise self.refuse
        self.created.append(args[-1])

    def patch_namespaced_custom_object_status(self, *args: Any, **_: Any) -> None:
        self.statuses.append(args[-1]["status"])

    def patch_cluster_custom_object_status(self, *args: Any, **_: Any) -> None:
        self.statuses.append(args[-1]["status"])


class StubCache:
    """The watch caches: node-a, running an agent unless `agents` says otherwise; `readers`: the
    agents that read placements."""

    def __init__(
        self,
        agents: tuple[str, ...] = ("node-a",),
        readers: tuple[str, ...] = (),
        labels: dict[str, str] | None = None,
    ) -> None:
        view_agents = Agents(frozenset(agents), placements=frozenset(readers))
        self._view = ClusterView({"node-a": labels or {}}, view_agents, {"shop": NamespaceInfo()})

    def placement(self, key: ProgramKey) -> None:
        return None

    def view(self) -> ClusterView:
        return self._view

    def reports(self, key: ProgramKey) -> dict[str, Any]:
        return {}

    def spec_entries(self, key: ProgramKey) -> dict[str, Any]:
        return {}


def program(namespaced: bool, spec: dict[str, Any] | None = None) -> dict[str, Any]:
    meta = {"name": "p", "uid": "u", "generation": 3}
    if namespaced:
        meta["namespace"] = "shop"
    return {"metadata": meta, "spec": dict(spec or SPEC)}


class PlacementRest:
    """Records placement writes."""

    def __init__(self) -> None:
        self.created: list[dict[str, Any]] = []

    def create(self, path: str, body: dict[str, Any]) -> None:
        assert path.endswith(f"/{names.PLACEMENT_PLURAL}")
        self.created.append(body)


def controller(
    custom: StubCustom, cache: StubCache | None = None, placements: PlacementRest | None = None
) -> tuple[ProgramController, DesiredTable]:
    desired, cache = DesiredTable(), cache or StubCache()
    writer = PlacementWriter(placements or PlacementRest(), cache)  # type: ignore[arg-type]
    made = ProgramController(None, custom, cache, desired, lambda nodes: None, list, writer)  # type: ignore[arg-type]
    return made, desired


@pytest.mark.parametrize("kind", [NAMESPACED, CLUSTER], ids=lambda k: k.kind)
@pytest.mark.parametrize(
    ("status", "message"),
    [
        (422, 'EbpfProgramVersion.bpfleet.io "x" is invalid: metadata.labels: Invalid value'),
        (404, 'namespaces "bpfleet-system" not found'),
    ],
)
def test_a_refused_version_is_reported_once_not_retried(kind, status, message):
    custom = StubCustom(program(kind.namespaced), refusal(status, message))
    made, desired = controller(custom)
    outcome = made.reconcile(kind.key("shop", "p"))  # raises if it would be retried
    assert outcome.status_written
    [written] = custom.statuses
    [failure] = written["failures"]
    assert failure["reason"] == reasons.INVALID_SPEC
    assert "the API server refused version" in failure["message"] and message in failure["message"]
    ready = next(c for c in written["conditions"] if c["type"] == "Ready")
    assert (ready["status"], ready["observedGeneration"]) == ("False", 3)
    assert desired.entries("node-a") == []


def test_other_errors_are_raised_for_the_queue_to_retry():
    custom = StubCustom(program(True), refusal(500, "etcdserver: request timed out"))
    with pytest.raises(ApiException):
        controller(custom)[0].reconcile(NAMESPACED.key("shop", "p"))
    assert custom.statuses == []


def test_a_tenant_spec_the_api_server_let_through_is_refused_before_any_version():
    spec = {**SPEC, "attach": {"type": "Kprobe", "function": "do_sys_openat2"}}
    custom = StubCustom(program(True, spec), refusal(500, "must not be called"))
    controller(custom)[0].reconcile(NAMESPACED.key("shop", "p"))
    [written] = custom.statuses
    assert written["failures"][0]["reason"] == reasons.INVALID_SPEC
    assert "use a ClusterEbpfProgram" in written["failures"][0]["message"]


def test_a_node_whose_agent_reads_no_placements_gets_an_entry_naming_the_version():
    custom = StubCustom(program(True), None)
    made, desired = controller(custom)
    made.reconcile(NAMESPACED.key("shop", "p"))
    [version] = custom.created
    assert desired.entries("node-a") == [
        {
            "kind": "EbpfProgram",
            "namespace": "shop",
            "name": "p",
            "generation": 3,
            "version": version["metadata"]["name"],
        }
    ]


@pytest.mark.parametrize("kind", [NAMESPACED, CLUSTER], ids=lambda k: k.kind)
def test_a_node_whose_agent_reads_placements_gets_the_placement_and_no_entry(kind, monkeypatch):
    monkeypatch.setattr(controller_module, "PROGRESS_HOLD_SECONDS", 0.0)
    spec = {**SPEC, "nodeSelector": {"matchLabels": {"pool": "web"}}}
    if not kind.namespaced:
        spec["scope"] = "Pods"
    custom, placements = StubCustom(program(kind.namespaced, spec), None), PlacementRest()
    cache = StubCache(readers=("node-a",), labels={"pool": "web"})
    made, desired = controller(custom, cache, placements)
    outcome = made.reconcile(kind.key("shop", "p"))
    assert outcome.status is not None and outcome.status["nodes"]["targeted"] == 1
    [version] = custom.created
    [placed] = placements.created
    assert placed["metadata"]["namespace"] == version["metadata"]["namespace"]
    assert placed["metadata"]["name"] == names.placement_name(kind.kind, "p")
    assert placed["metadata"]["ownerReferences"][0]["uid"] == "u"
    assert placed["spec"] == {
        "kind": kind.kind,
        "namespace": "shop" if kind.namespaced else "",
        "name": "p",
        "generation": 3,
        "version": version["metadata"]["name"],
        "nodeSelector": {"matchLabels": {"pool": "web"}},
    }
    assert desired.entries("node-a") == []


def test_a_new_generations_first_progressing_status_is_held_then_written(monkeypatch):
    """Ready usually comes within a tenth of a second of the first reconcile: one status write,
    not a Progressing one first. A rollout that takes longer says Progressing after the hold."""
    monkeypatch.setattr(controller_module, "PROGRESS_HOLD_SECONDS", 0.2)
    custom = StubCustom(program(True), None)
    made, _ = controller(custom)
    key = NAMESPACED.key("shop", "p")
    first = made.reconcile(key)
    assert custom.statuses == [] and not first.status_written
    assert 0 < first.hold <= 0.2 and first.ready_after == (None, None)  # nothing new was shown
    assert 0 < made.reconcile(key).hold <= first.hold  # the same hold, not a new one
    time.sleep(first.hold)
    assert made.reconcile(key).status_written
    [written] = custom.statuses
    ready = next(c for c in written["conditions"] if c["type"] == "Ready")
    assert (ready["status"], ready["reason"]) == ("False", reasons.PROGRESSING)


def test_a_node_without_an_agent_gets_no_entry_and_is_not_targeted():
    custom = StubCustom(program(True), None)
    made, desired = controller(custom, StubCache(agents=()))
    made.reconcile(NAMESPACED.key("shop", "p"))
    [written] = custom.statuses
    assert written["nodes"]["targeted"] == 0 and written["failures"] == []
    ready = next(c for c in written["conditions"] if c["type"] == "Ready")
    assert ready["status"] == "True"
    assert "1 node matches nodeSelector but runs no agent" in ready["message"]
    assert desired.entries("node-a") == []


# --- the node writer ------------------------------------------------------------------------------


class StubInformer:
    def __init__(self, items: dict[str, Any]) -> None:
        self.items = items

    def get(self, name: str) -> Any:
        return self.items.get(name)


class WriterCache:
    def __init__(self, states: dict[str, NodeState], agents: dict[str, AgentInfo]) -> None:
        self.states, self.agents = StubInformer(states), StubInformer(agents)


class WriterRest:
    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []

    def create(self, path: str, body: dict[str, Any]) -> None:
        assert path.endswith(f"/{names.NODE_STATE_PROGRAMS_PLURAL}")
        self.calls.append(("create", body))

    def merge_patch(self, path: str, body: dict[str, Any]) -> None:
        collection, _, name = path.rpartition("/")
        assert collection.endswith(f"/{names.NODE_STATE_PROGRAMS_PLURAL}")
        self.calls.append(("patch", (name, body)))


def fifty_programs() -> DesiredTable:
    desired = DesiredTable()
    for i in range(50):
        key = NAMESPACED.key("shop", f"p{i:02}")
        desired.set_program(key, {"node-a": entry(key, 1, f"p{i:02}-v")})
    return desired


def test_fifty_programs_are_one_create_owned_by_the_nodes_bpfleet_node():
    custom = WriterRest()
    cache = WriterCache({}, {"node-a": AgentInfo("agent-uid", None)})
    metrics = OperatorMetrics()
    NodeWriter(custom, fifty_programs(), cache, metrics.node_state_writes).write("node-a")  # type: ignore[arg-type]
    samples = {"operation": "create"}
    assert metrics.registry.get_sample_value("bpfleet_operator_node_state_writes_total", samples) == 1
    [(call, body), strip] = custom.calls
    assert call == "create" and len(body["spec"]["programs"]) == 50
    assert strip == ("patch", ("node-a", {"metadata": {"managedFields": [{}]}}))  # no field tracking
    assert body["metadata"]["name"] == body["spec"]["nodeName"] == "node-a"
    assert body["metadata"]["ownerReferences"] == [
        {"apiVersion": names.API_VERSION, "kind": names.NODE_STATE_KIND, "name": "node-a", "uid": "agent-uid"}
    ]


def test_a_node_without_an_agent_gets_no_state():
    custom = WriterRest()
    NodeWriter(custom, fifty_programs(), WriterCache({}, {})).write("node-a")  # type: ignore[arg-type]
    assert custom.calls == []


def test_a_state_is_patched_once_and_not_again_until_the_watch_shows_something_else():
    desired = fifty_programs()
    state = NodeState("uid", (), {}, resource_version="1")
    cache = WriterCache({"node-a": state}, {"node-a": AgentInfo("agent-uid", None)})
    custom = WriterRest()
    writer = NodeWriter(custom, desired, cache)  # type: ignore[arg-type]
    writer.write("node-a")
    writer.write("node-a")  # queued again before the watch showed the write: nothing new
    [(call, (name, body))] = custom.calls
    assert (call, name, len(body["spec"]["programs"])) == ("patch", "node-a", 50)
    # The watch shows it: nothing to write either.
    cache.states.items["node-a"] = NodeState("uid", tuple(desired.entries("node-a")), {}, "2")
    writer.write("node-a")
    assert len(custom.calls) == 1
    # Someone else changed it: written back.
    cache.states.items["node-a"] = NodeState("uid", (), {}, "3")
    writer.write("node-a")
    assert len(custom.calls) == 2
