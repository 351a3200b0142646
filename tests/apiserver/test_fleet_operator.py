"""The operator for real, against the control plane, on a fleet where not every node runs an agent
and agents come, go and fall silent: only nodes with an agent are targeted, a silent agent holds a
deletion for the grace period at most, and status follows Nodes and agents within seconds. The test
plays the agents: it writes their BpfleetNodes and heartbeats, reports node objects Ready and drops
their finalizer from node objects being deleted.

Every wait here is far shorter than the operator's 60 s resync, so what it sees comes from watches.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from kubernetes.client import V1Node, V1ObjectMeta

from bpfleet_api import names, reasons
from e2e.harness import install_crds, operator_process, wait_for
from e2e.kube import Kube
from tests.apiserver.operator_support import (
    agent_removed,
    agent_reports_ready,
    agent_starts,
    agents_detach,
    create_namespace,
    delete_quietly,
    heartbeat_at,
    ready_message,
    reconciled,
)

pytestmark = pytest.mark.apiserver

RUN = uuid.uuid4().hex[:6]
NODE_LABEL = "bpfleet.test/fleet"  # on this module's Nodes only; each test picks its own value
GRACE_SECONDS = 5.0
SOURCE = "int f(struct __sk_buff *skb) { return 1; }"


@pytest.fixture(scope="module")
def cluster(kube: Kube, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Kube]:
    """CRDs and the operator, with a short deletion grace period."""
    install_crds(kube.kubeconfig)
    process = operator_process(kube.kubeconfig, tmp_path_factory.mktemp("fleet-operator"))
    process.env["BPFLEET_DELETE_GRACE_SECONDS"] = str(GRACE_SECONDS)
    # Live agents heartbeat once, at the start of their test; silent ones an hour ago.
    process.env["BPFLEET_AGENT_SILENCE_SECONDS"] = "600"
    process.start()
    try:
        yield kube
    finally:
        process.stop()


@pytest.fixture
def namespace(cluster: Kube) -> Iterator[str]:
    """A namespace for one test; its programs are deleted (the test playing every agent) after it."""
    name = create_namespace(cluster, f"fleet-{uuid.uuid4().hex[:8]}")
    try:
        yield name
    finally:
        cluster.kubectl("delete", "ebpf", "--all", "-n", name, "--wait=false", check=False)
        wait_for(
            "programs deleted",
            lambda: agents_detach(cluster) or not cluster.programs(name),
            timeout=30,
            interval=0.2,
        )
        cluster.kubectl("delete", "namespace", name, "--wait=false", check=False)


@pytest.fixture
def fleet(cluster: Kube) -> Iterator[Callable[..., str]]:
    """make(suffix, agent=..., label=...) creates a Node (and, unless agent is None, its agent's
    BpfleetNode heartbeating at `agent`); all are removed after the test."""
    made: list[str] = []

    def make(suffix: str, label: str, agent: str | None = "now") -> str:
        node = f"fleet-{RUN}-{suffix}"
        cluster.core.create_node(V1Node(metadata=V1ObjectMeta(name=node, labels={NODE_LABEL: label})))
        made.append(node)
        if agent is not None:
            agent_starts(cluster, node, heartbeat_at() if agent == "now" else agent)
        return node

    yield make
    for node in made:
        delete_quietly(lambda node=node: cluster.core.delete_node(node))
        agent_removed(cluster, node)


def apply(kube: Kube, namespace: str, name: str, label: str) -> None:
    manifest = {
        "apiVersion": names.API_VERSION,
        "kind": names.PROGRAM_KIND,
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "source": {"inline": SOURCE},
            "function": "f",
            "attach": {"type": "CgroupSkb", "direction": "Egress"},
            "podSelector": {},
            "nodeSelector": {"matchLabels": {NODE_LABEL: label}},
        },
    }
    kube.kubectl("apply", "-f", "-", input=json.dumps(manifest))


def node_names(kube: Kube, namespace: str, program: str) -> list[str]:
    return sorted(o["spec"]["nodeName"] for o in kube.node_programs(namespace, program))


def report_ready(kube: Kube, namespace: str, program: str) -> None:
    for obj in kube.node_programs(namespace, program):
        agent_reports_ready(kube, obj)


def status_says(kube: Kube, namespace: str, name: str, ready: str, nodes: str, message: str) -> bool:
    program = kube.program(namespace, name)
    if not reconciled(program):
        return False
    assert program is not None
    cond = next(c for c in program["status"]["conditions"] if c["type"] == "Ready")
    return (cond["status"], program["status"]["summary"]["nodes"]) == (ready, nodes) and message in (
        cond["message"]
    )


def warnings(kube: Kube, namespace: str, name: str, reason: str) -> list[str]:
    return [e.message for e in kube.events(namespace, name) if (e.type, e.reason) == ("Warning", reason)]


def test_nodes_without_an_agent_block_neither_ready_nor_deletion(cluster: Kube, namespace: str, fleet):
    label = f"bare-{RUN}"
    with_agent = fleet("a", label)
    fleet("b", label, agent=None)
    fleet("c", label, agent=None)
    apply(cluster, namespace, "counter", label)

    wait_for("a node object for the node with an agent", lambda: node_names(cluster, namespace, "counter"))
    assert node_names(cluster, namespace, "counter") == [with_agent]
    report_ready(cluster, namespace, "counter")
    wait_for(
        "Ready on the one node that runs an agent",
        lambda: status_says(
            cluster, namespace, "counter", "True", "1/1", "2 nodes match nodeSelector but run no agent"
        ),
    )
    program = cluster.program(namespace, "counter")
    assert program is not None and program["status"]["nodes"]["targeted"] == 1

    cluster.kubectl("delete", "ebpf", "counter", "-n", namespace, "--wait=false")
    # Only the one agent detaches; the Nodes without one have nothing to wait for.
    wait_for(
        "deleted", lambda: agents_detach(cluster) or cluster.program(namespace, "counter") is None, 10, 0.2
    )


def test_an_agent_that_starts_later_gets_its_node_object_and_one_that_goes_holds_nothing(
    cluster: Kube, namespace: str, fleet
):
    label = f"late-{RUN}"
    node = fleet("d", label, agent=None)
    apply(cluster, namespace, "counter", label)
    wait_for(
        "Ready with no node to run on",
        lambda: status_says(
            cluster, namespace, "counter", "True", "0/0", "1 node matches nodeSelector but runs no agent"
        ),
    )
    assert node_names(cluster, namespace, "counter") == []

    time.sleep(1)  # past the reconcile its own status write sets off: only a watch brings it back now
    agent_starts(cluster, node)
    took = wait_for("its node object", lambda: node_names(cluster, namespace, "counter") == [node], 10)
    assert took < 10
    wait_for(
        "the node counted", lambda: status_says(cluster, namespace, "counter", "False", "0/1", "waiting")
    )

    # Its agent uninstalled while the node object is there: nobody will detach, so nothing waits.
    time.sleep(1)
    agent_removed(cluster, node)
    wait_for("its node object released", lambda: node_names(cluster, namespace, "counter") == [], 10)
    wait_for(
        "no longer counted",
        lambda: status_says(cluster, namespace, "counter", "True", "0/0", "runs no agent"),
    )
    cluster.kubectl("delete", "ebpf", "counter", "-n", namespace, "--wait=false")
    wait_for("deleted without any agent", lambda: cluster.program(namespace, "counter") is None, 10, 0.2)


def held_by(kube: Kube, namespace: str, program: str) -> list[str]:
    """Nodes whose node object still carries the agent's finalizer."""
    return sorted(
        o["spec"]["nodeName"]
        for o in kube.node_programs(namespace, program)
        if names.AGENT_FINALIZER in (o["metadata"].get("finalizers") or [])
    )


def test_a_silent_agent_holds_a_deletion_for_the_grace_period_at_most(cluster: Kube, namespace: str, fleet):
    label = f"silent-{RUN}"
    live = fleet("e", label)
    silent = fleet("f", label, agent=heartbeat_at(3600))
    apply(cluster, namespace, "counter", label)
    wait_for("both node objects", lambda: node_names(cluster, namespace, "counter") == [live, silent])
    report_ready(cluster, namespace, "counter")
    wait_for(
        "the silent agent reported",
        lambda: status_says(cluster, namespace, "counter", "False", "1/2", reasons.AGENT_NOT_REPORTING),
    )

    cluster.kubectl("delete", "ebpf", "counter", "-n", namespace, "--wait=false")
    deleted = time.monotonic()
    wait_for(
        "node objects deleted",
        lambda: all(
            o["metadata"].get("deletionTimestamp") for o in cluster.node_programs(namespace, "counter")
        ),
    )
    time.sleep(1.5)
    assert held_by(cluster, namespace, "counter") == [live, silent], "the silent agent is waited for a while"
    wait_for("the silent node released", lambda: held_by(cluster, namespace, "counter") == [live], 15, 0.2)
    assert time.monotonic() - deleted <= GRACE_SECONDS + 4

    [warning] = warnings(cluster, namespace, "counter", reasons.AGENT_SILENT_ON_DELETE)
    assert silent in warning and live not in warning
    assert f"/sys/fs/bpf/bpfleet/{namespace}/counter" in warning and "restart their agent" in warning
    # A live agent is still waited for, however long the grace period.
    time.sleep(1)
    assert cluster.program(namespace, "counter") is not None
    wait_for(
        "deleted once the live agent detached",
        lambda: agents_detach(cluster) or cluster.program(namespace, "counter") is None,
        10,
        0.2,
    )


def test_status_follows_node_deletion_within_seconds(cluster: Kube, namespace: str, fleet):
    label = f"gone-{RUN}"
    stays = fleet("g", label)
    goes = fleet("h", label)
    apply(cluster, namespace, "counter", label)
    wait_for("both node objects", lambda: node_names(cluster, namespace, "counter") == [stays, goes])
    report_ready(cluster, namespace, "counter")
    wait_for("Ready on both", lambda: status_says(cluster, namespace, "counter", "True", "2/2", "2 of 2"))

    # Let the reconcile that its own status write sets off pass, so that only the Node's deletion
    # event can bring the program back in time (the resync is 60 s away).
    time.sleep(1)
    # Its BpfleetNode stays (nothing collects it here): the Node is what says the node is gone.
    cluster.core.delete_node(goes)
    took = wait_for(
        "status without the gone node",
        lambda: status_says(cluster, namespace, "counter", "True", "1/1", "running on 1 of 1 nodes"),
        10,
    )
    assert took < 5
    wait_for("its node object released", lambda: node_names(cluster, namespace, "counter") == [stays], 5)
    program: dict[str, Any] | None = cluster.program(namespace, "counter")
    assert program is not None and program["status"]["nodes"]["targeted"] == 1
    assert "run no agent" not in ready_message(program)
