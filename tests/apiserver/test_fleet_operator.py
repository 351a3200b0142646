"""The operator for real, against the control plane, on a fleet where not every node runs an agent
and agents come, go and fall silent: only nodes with an agent are targeted, a silent agent holds a
deletion for the grace period at most, and status follows Nodes and agents within seconds; and 50
programs applied at once cost no EbpfNodeState spec write where agents read placements, and about
one per node where they do not. The test plays the agents: it writes their BpfleetNodes and
heartbeats, and their EbpfNodeState status (ready on what their spec and placements ask, the rest
unloaded).

Every wait here is far shorter than the operator's 60 s resync, so what it sees comes from watches.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from kubernetes.client import V1Node, V1ObjectMeta

from bpfleet_api import names, reasons
from bpfleet_operator.handlers import QUIET_SECONDS
from e2e.harness import install_crds, operator_process, wait_for
from e2e.kube import Kube
from tests.apiserver.operator_support import (
    agent_removed,
    agent_reports,
    agent_starts,
    agents_report,
    apply_program,
    delete_quietly,
    heartbeat_at,
    namespace_for_a_test,
    node_state,
    program_nodes,
    ready_message,
    reconciled,
    skb_program,
    wait_operator_ready,
)

pytestmark = pytest.mark.apiserver

RUN = uuid.uuid4().hex[:6]
NODE_LABEL = "bpfleet.test/fleet"  # on this module's Nodes only; each test picks its own value
GRACE_SECONDS = 5.0


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
        wait_operator_ready(process.log_path)
        yield kube
    finally:
        process.stop()


@pytest.fixture
def namespace(cluster: Kube) -> Iterator[str]:
    """A namespace for one test; its programs are deleted (the test playing every agent) after it."""
    with namespace_for_a_test(cluster, "fleet") as name:
        yield name


@pytest.fixture
def fleet(cluster: Kube) -> Iterator[Callable[..., str]]:
    """make(suffix, agent=..., label=...) creates a Node (and, unless agent is None, its agent's
    BpfleetNode heartbeating at `agent`); all are removed after the test."""
    made: list[str] = []

    def make(suffix: str, label: str, agent: str | None = "now", reads_placements: bool = True) -> str:
        node = f"fleet-{RUN}-{suffix}"
        cluster.core.create_node(V1Node(metadata=V1ObjectMeta(name=node, labels={NODE_LABEL: label})))
        made.append(node)
        if agent is not None:
            heartbeat = heartbeat_at() if agent == "now" else agent
            agent_starts(cluster, node, heartbeat, reads_placements)
        return node

    yield make
    for node in made:
        delete_quietly(lambda node=node: cluster.core.delete_node(node))
        agent_removed(cluster, node)


def apply(kube: Kube, namespace: str, name: str, label: str) -> None:
    apply_program(kube, skb_program(namespace, name, {NODE_LABEL: label}))


def node_names(kube: Kube, namespace: str, program: str) -> list[str]:
    return program_nodes(kube, namespace, program)


def report_ready(kube: Kube, namespace: str, program: str) -> None:
    agents_report(kube, node_names(kube, namespace, program))


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

    wait_for("an entry on the node with an agent", lambda: node_names(cluster, namespace, "counter"))
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
    # Only the one agent unloads; the Nodes without one have nothing to wait for (nor any state).
    state = node_state(cluster, with_agent) or {}
    agent = cluster.custom.get_cluster_custom_object(
        names.GROUP, names.VERSION, names.NODE_STATE_PLURAL, with_agent
    )
    assert [(o["kind"], o["uid"]) for o in state["metadata"]["ownerReferences"]] == [
        (names.NODE_STATE_KIND, agent["metadata"]["uid"])
    ]
    wait_for(
        "deleted", lambda: agents_report(cluster) or cluster.program(namespace, "counter") is None, 10, 0.2
    )


def test_an_agent_that_starts_later_gets_its_entry_and_one_that_goes_holds_nothing(
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
    took = wait_for("its entry", lambda: node_names(cluster, namespace, "counter") == [node], 10)
    assert took < 10
    wait_for(
        "the node counted", lambda: status_says(cluster, namespace, "counter", "False", "0/1", "waiting")
    )

    agent_reports(cluster, node)  # it runs the program now
    # Its agent uninstalled while its state lists the program: nobody will unload, so nothing waits.
    # (Garbage collection would delete its EbpfNodeState with the BpfleetNode; none runs here.)
    time.sleep(1)
    agent_removed(cluster, node)
    wait_for(
        "no longer counted",
        lambda: status_says(cluster, namespace, "counter", "True", "0/0", "runs no agent"),
    )
    cluster.kubectl("delete", "ebpf", "counter", "-n", namespace, "--wait=false")
    wait_for("deleted without any agent", lambda: cluster.program(namespace, "counter") is None, 10, 0.2)


def held_by(kube: Kube, namespace: str, program: str, nodes: list[str]) -> list[str]:
    """Nodes whose EbpfNodeState status still lists the program."""
    held = []
    for node in nodes:
        state = node_state(kube, node) or {}
        items = (state.get("status") or {}).get("programs") or []
        if any((i["namespace"], i["name"]) == (namespace, program) for i in items):
            held.append(node)
    return held


def test_a_silent_agent_holds_a_deletion_for_the_grace_period_at_most(cluster: Kube, namespace: str, fleet):
    label = f"silent-{RUN}"
    live = fleet("e", label)
    silent = fleet("f", label, agent=heartbeat_at(3600))
    apply(cluster, namespace, "counter", label)
    wait_for("an entry on both nodes", lambda: node_names(cluster, namespace, "counter") == [live, silent])
    report_ready(cluster, namespace, "counter")
    wait_for(
        "the silent agent reported",
        lambda: status_says(cluster, namespace, "counter", "False", "1/2", reasons.AGENT_NOT_REPORTING),
    )

    cluster.kubectl("delete", "ebpf", "counter", "-n", namespace, "--wait=false")
    deleted = time.monotonic()
    wait_for("the entries removed from both specs", lambda: node_names(cluster, namespace, "counter") == [])
    # Neither agent has unloaded yet: both states still list it.
    assert held_by(cluster, namespace, "counter", [live, silent]) == [live, silent]
    time.sleep(1.5)
    assert cluster.program(namespace, "counter") is not None, "the silent agent is waited for a while"
    assert not warnings(cluster, namespace, "counter", reasons.AGENT_SILENT_ON_DELETE)
    wait_for(
        "given up on the silent agent",
        lambda: warnings(cluster, namespace, "counter", reasons.AGENT_SILENT_ON_DELETE),
        15,
        0.2,
    )
    assert time.monotonic() - deleted <= GRACE_SECONDS + 4

    [warning] = warnings(cluster, namespace, "counter", reasons.AGENT_SILENT_ON_DELETE)
    assert silent in warning and live not in warning
    assert f"/sys/fs/bpf/bpfleet/{namespace}/counter" in warning and "restart their agent" in warning
    # A live agent is still waited for, however long the grace period.
    time.sleep(1)
    assert cluster.program(namespace, "counter") is not None
    agent_reports(cluster, live)  # it has unloaded: its status no longer lists the program
    wait_for(
        "deleted once the live agent unloaded", lambda: cluster.program(namespace, "counter") is None, 10, 0.2
    )


def test_status_follows_node_deletion_within_seconds(cluster: Kube, namespace: str, fleet):
    label = f"gone-{RUN}"
    stays = fleet("g", label)
    goes = fleet("h", label)
    apply(cluster, namespace, "counter", label)
    wait_for("an entry on both nodes", lambda: node_names(cluster, namespace, "counter") == [stays, goes])
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
    # Its EbpfNodeState stays (nothing collects it here), and so may its entry: nothing runs there.
    program: dict[str, Any] | None = cluster.program(namespace, "counter")
    assert program is not None and program["status"]["nodes"]["targeted"] == 1
    assert "run no agent" not in ready_message(program)


@pytest.mark.parametrize(
    ("reads_placements", "spec_writes"), [(True, (0, 0)), (False, (1, 2))], ids=["placements", "older-agents"]
)
def test_fifty_programs_applied_at_once_are_about_one_spec_write_per_node_and_none_with_placements(
    cluster: Kube, namespace: str, fleet, reads_placements: bool, spec_writes: tuple[int, int]
):
    """Agents that read placements get the 50 programs from 50 placement writes and no spec write;
    older agents' specs name every program, in about one write per node."""
    kind = "placements" if reads_placements else "older"
    label = f"burst-{RUN}-{kind}"
    nodes = [fleet(f"burst{i}-{kind}", label, reads_placements=reads_placements) for i in range(5)]
    wait_for("a state per node", lambda: all(node_state(cluster, n) for n in nodes), 10)
    # A spec write bumps metadata.generation (status has its own subresource): count those.
    before = {n: (node_state(cluster, n) or {})["metadata"]["generation"] for n in nodes}
    # The burst starts after a quiet second, as a burst of applies on an idle fleet does: writes
    # for changes already under way (the states just made, the last test's deletions) coalesce in
    # a window of their own, which would otherwise close in the middle of this burst.
    time.sleep(QUIET_SECONDS + 0.5)
    programs = [skb_program(namespace, f"p{i:02}", {NODE_LABEL: label}, returns=i % 2) for i in range(50)]
    # At once: side by side, as a GitOps tool's parallel apply would.
    with ThreadPoolExecutor(10) as pool:
        list(
            pool.map(
                lambda body: cluster.custom.create_namespaced_custom_object(
                    names.GROUP, names.VERSION, namespace, names.PROGRAM_PLURAL, body
                ),
                programs,
            )
        )

    def listed() -> bool:
        entries = cluster.node_entries()
        return all(len(entries.get(n, [])) == 50 for n in nodes)

    wait_for("50 entries on every node", listed, 30, 0.2)
    time.sleep(2.5)  # any late write would land within the writer's coalescing window
    writes = {n: (node_state(cluster, n) or {})["metadata"]["generation"] - before[n] for n in nodes}
    low, high = spec_writes
    assert all(low <= w <= high for w in writes.values()), writes
    agents_report(cluster, nodes)
    wait_for(
        "all Ready",
        lambda: all(
            status_says(cluster, namespace, p["metadata"]["name"], "True", "5/5", "") for p in programs
        ),
        30,
        0.5,
    )
