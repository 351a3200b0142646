"""What the agent does with the node objects it watches: which it serves, which it refuses and how it
says so, which it ignores. The API is a recorder here; the kernel the in-memory fake."""

from __future__ import annotations

from typing import Any

import pytest
from kubernetes.client import ApiClient

from bpfleet_api import names, reasons
from node_agent.agent import Agent
from node_agent.compile_pool import CompilePool
from node_agent.model import Trust
from node_agent.reconcile import PassResult, Reconciler
from tests.unit.builders import cluster_program, node_program
from tests.unit.fakes import FakeBackend, FakeCgroups, ManualStart


class Listed:
    def __init__(self, objects: list[dict[str, Any]]) -> None:
        self.items = objects

    def objects(self) -> list[dict[str, Any]]:
        return list(self.items)


class Recorder:
    """The two CustomObjectsApi calls the agent makes on node objects."""

    def __init__(self) -> None:
        self.status: dict[tuple[str, str], dict[str, Any]] = {}
        self.metadata: dict[tuple[str, str], dict[str, Any]] = {}

    def patch_namespaced_custom_object_status(self, group, version, namespace, plural, name, body, **_):
        self.status[(namespace, name)] = body["status"]

    def patch_namespaced_custom_object(self, group, version, namespace, plural, name, body, **_):
        self.metadata[(namespace, name)] = body["metadata"]


@pytest.fixture
def kernel() -> FakeBackend:
    return FakeBackend()


def agent_with(kernel: FakeBackend, objects: list[dict[str, Any]], node: str = "node-a") -> Agent:
    agent = Agent(ApiClient(), node, Reconciler(kernel, FakeCgroups()), trust=Trust("bpfleet-system"))
    agent.programs, agent.pods = Listed(objects), Listed([])  # type: ignore[assignment]
    agent.custom = Recorder()  # type: ignore[assignment]
    return agent


def test_the_watch_selects_the_label_value_of_the_node_name(kernel):
    long_node = "ip-10-0-0-1." + "very-long-domain-" * 4 + "example.com"
    agent = Agent(ApiClient(), long_node, Reconciler(kernel, FakeCgroups()))
    assert agent.programs.selectors["labelSelector"] == f"{names.NODE_LABEL}={names.label_value(long_node)}"
    assert len(names.label_value(long_node)) <= 63


def test_a_node_object_for_another_node_is_ignored(kernel):
    other = node_program(node="node-a")
    other["spec"]["nodeName"] = "node-b"  # labelled for this node, addressed to another
    agent = agent_with(kernel, [other])
    agent.reconcile_once()
    assert kernel.loads == [] and agent.custom.status == {} and agent.custom.metadata == {}


def test_a_cluster_kind_outside_the_system_namespace_is_refused_in_status(kernel):
    forged = cluster_program(namespace="shop")
    agent = agent_with(kernel, [forged])
    agent.reconcile_once()
    assert kernel.loads == []
    status = agent.custom.status[("shop", "admin-node-a")]
    [failure] = status["failures"]
    assert failure["reason"] == reasons.INVALID_SPEC and "ClusterEbpfProgram" in failure["message"]
    [ready] = status["conditions"]
    assert (ready["status"], ready["reason"]) == ("False", reasons.INVALID_SPEC)
    assert agent.custom.metadata == {}  # no finalizer: it runs nothing here


def test_a_refused_tenant_program_stops_running_and_says_why(kernel):
    tenant = node_program()
    agent = agent_with(kernel, [tenant])
    agent.reconcile_once()
    assert len(kernel.programs) == 1
    tenant["spec"]["attach"] = {"type": "Kprobe", "function": "do_sys_openat2"}  # the API server let it by
    agent.reconcile_once()
    assert kernel.programs == {}
    message = agent.custom.status[("shop", "counter-node-a")]["failures"][0]["message"]
    assert "Kprobe" in message and "use a ClusterEbpfProgram" in message


def test_a_refused_object_being_deleted_is_released(kernel):
    forged = cluster_program(namespace="shop")
    forged["metadata"]["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    agent = agent_with(kernel, [forged])
    agent.reconcile_once()
    assert agent.custom.metadata[("shop", "admin-node-a")]["finalizers"] == []
    assert agent.custom.status == {}


def test_a_cluster_program_in_the_system_namespace_is_served(kernel):
    admin = cluster_program(scope="Node", attach={"type": "Tracepoint", "name": "sched:sched_process_exec"})
    admin["metadata"]["finalizers"] = []
    agent = agent_with(kernel, [admin])
    agent.reconcile_once()
    [ref] = kernel.programs
    assert ref.namespace == "_cluster"
    assert agent.custom.metadata[("bpfleet-system", "admin-node-a")]["finalizers"] == [names.AGENT_FINALIZER]
    status = agent.custom.status[("bpfleet-system", "admin-node-a")]
    assert status["conditions"][0]["status"] == "True" and status["targets"] == [
        {"name": "node", "state": "Attached"}
    ]


def test_queued_compiles_never_make_passes_spin_a_finished_compile_wakes_one(kernel):
    start = ManualStart()
    pool = CompilePool(kernel.load, start=start)
    agent = Agent(
        ApiClient(), "node-a", Reconciler(kernel, FakeCgroups(), pool=pool), trust=Trust("bpfleet-system")
    )
    agent.programs, agent.pods = Listed([node_program()]), Listed([])  # type: ignore[assignment]
    agent.custom = Recorder()  # type: ignore[assignment]
    result = agent.reconcile_once()
    assert result.queued and len(start.jobs) == 1 and kernel.programs == {}
    assert agent._next_pass_in(result) == agent.resync  # the pool says when, not a timer
    assert not agent._wake.is_set()
    start.finish_one()
    assert agent._wake.is_set() and len(kernel.programs) == 1
    assert not agent.reconcile_once().queued
    assert agent._next_pass_in(PassResult([], waiting=False, follows_interfaces=True)) == 5.0
    assert agent._next_pass_in(PassResult([], waiting=False)) == agent.resync
