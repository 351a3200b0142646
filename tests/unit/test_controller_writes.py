"""The controller's handling of node-object writes the API server refuses: into status, not retried
for ever. The API is a stub here; tests/apiserver/test_tenancy_operator.py runs the real thing."""

from __future__ import annotations

import json
from types import SimpleNamespace
from typing import Any

import pytest
from kubernetes.client.exceptions import ApiException

from bpfleet_api import names, reasons
from bpfleet_operator.controller import ProgramController
from bpfleet_operator.kinds import CLUSTER, NAMESPACED

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
    """Answers what reconcile reads (node-a runs an agent unless `agents` says otherwise); refuses
    every node-object create with `refuse`."""

    def __init__(
        self, program: dict[str, Any], refuse: ApiException, agents: tuple[str, ...] = ("node-a",)
    ) -> None:
        self.program, self.refuse, self.agents = program, refuse, agents
        self.statuses: list[dict[str, Any]] = []

    def get_namespaced_custom_object(self, *_: Any) -> dict[str, Any]:
        return self.program

    def get_cluster_custom_object(self, *_: Any) -> dict[str, Any]:
        return self.program

    def list_namespaced_custom_object(self, *_: Any, **__: Any) -> dict[str, Any]:
        return {"items": []}

    def list_cluster_custom_object(self, *args: Any, **__: Any) -> dict[str, Any]:
        # BpfleetNodes of the agents, not heartbeated yet: their nodes are targeted.
        if names.NODE_STATE_PLURAL in args:
            return {"items": [{"metadata": {"name": node}} for node in self.agents]}
        return {"items": []}

    def create_namespaced_custom_object(self, *_: Any) -> None:
        raise self.refuse

    def patch_namespaced_custom_object_status(self, *args: Any, **_: Any) -> None:
        self.statuses.append(args[-1]["status"])

    def patch_cluster_custom_object_status(self, *args: Any, **_: Any) -> None:
        self.statuses.append(args[-1]["status"])


class StubCore:
    def list_node(self) -> SimpleNamespace:
        return SimpleNamespace(items=[SimpleNamespace(metadata=SimpleNamespace(name="node-a", labels={}))])

    def list_namespace(self) -> SimpleNamespace:
        meta = SimpleNamespace(name="shop", labels={}, annotations={})
        return SimpleNamespace(items=[SimpleNamespace(metadata=meta)])


def program(namespaced: bool) -> dict[str, Any]:
    meta = {"name": "p", "uid": "u", "generation": 3}
    if namespaced:
        meta["namespace"] = "shop"
    return {"metadata": meta, "spec": dict(SPEC)}


@pytest.mark.parametrize("kind", [NAMESPACED, CLUSTER], ids=lambda k: k.kind)
@pytest.mark.parametrize(
    ("status", "message"),
    [
        (422, 'EbpfNodeProgram.bpfleet.io "x" is invalid: metadata.labels: Invalid value'),
        (404, 'namespaces "bpfleet-system" not found'),
    ],
)
def test_a_refused_node_object_is_reported_once_not_retried(kind, status, message):
    custom = StubCustom(program(kind.namespaced), refusal(status, message))
    controller = ProgramController(StubCore(), custom)  # type: ignore[arg-type]
    outcome = controller.reconcile(kind.key("shop", "p"))  # raises if it would be retried
    assert outcome.status_written
    [written] = custom.statuses
    [failure] = written["failures"]
    assert (failure["node"], failure["reason"]) == ("node-a", reasons.INVALID_SPEC)
    assert "the API server refused node object" in failure["message"] and message in failure["message"]
    ready = next(c for c in written["conditions"] if c["type"] == "Ready")
    assert (ready["status"], ready["observedGeneration"]) == ("False", 3)


def test_other_errors_are_raised_for_the_queue_to_retry():
    custom = StubCustom(program(True), refusal(500, "etcdserver: request timed out"))
    with pytest.raises(ApiException):
        ProgramController(StubCore(), custom).reconcile(NAMESPACED.key("shop", "p"))  # type: ignore[arg-type]
    assert custom.statuses == []


def test_a_tenant_spec_the_api_server_let_through_is_refused_before_any_node_object():
    spec = {**SPEC, "attach": {"type": "Kprobe", "function": "do_sys_openat2"}}
    custom = StubCustom({**program(True), "spec": spec}, refusal(500, "must not be called"))
    ProgramController(StubCore(), custom).reconcile(NAMESPACED.key("shop", "p"))  # type: ignore[arg-type]
    [written] = custom.statuses
    assert written["failures"][0]["reason"] == reasons.INVALID_SPEC
    assert "use a ClusterEbpfProgram" in written["failures"][0]["message"]


def test_a_node_without_an_agent_gets_no_node_object_and_is_not_targeted():
    custom = StubCustom(program(True), refusal(500, "must not be called"), agents=())
    ProgramController(StubCore(), custom).reconcile(NAMESPACED.key("shop", "p"))  # type: ignore[arg-type]
    [written] = custom.statuses
    assert written["nodes"]["targeted"] == 0 and written["failures"] == []
    ready = next(c for c in written["conditions"] if c["type"] == "Ready")
    assert ready["status"] == "True"
    assert "1 node matches nodeSelector but runs no agent" in ready["message"]
