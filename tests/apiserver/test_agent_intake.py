"""The agent on a real API server (kernel: the in-memory fake): it watches its own EbpfNodeState
only and the placements its Node's labels match, reads the versions their entries name, and writes
a status the CRD accepts, once per change."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes.client import V1Node, V1ObjectMeta
from kubernetes.client.exceptions import ApiException

from bpfleet_api import names, reasons, versions
from bpfleet_api.informer import wait_synced
from e2e.harness import wait_for
from e2e.kube import Kube
from node_agent.agent import Agent
from node_agent.model import Trust
from node_agent.reconcile import Reconciler
from node_agent.status import serving_version
from tests.unit.fakes import FakeBackend, FakeCgroups

pytestmark = pytest.mark.apiserver

RUN = uuid.uuid4().hex[:6]
NAMESPACE = "default"


def version(program: str, source: str = "int f(void *c) { return 1; }") -> dict[str, Any]:
    spec = versions.with_hash(
        {
            "programKind": names.PROGRAM_KIND,
            "programName": program,
            "source": {"text": source, "sha256": "s", "origin": "inline"},
            "function": "f",
            "attach": {"type": "CgroupSkb", "direction": "Egress"},
            "podSelector": {},
        }
    )
    name = names.version_name(names.PROGRAM_KIND, NAMESPACE, program, spec["contentHash"])
    return {
        "apiVersion": names.API_VERSION,
        "kind": names.VERSION_KIND,
        "metadata": {"name": name},
        "spec": spec,
    }


def entry(body: dict[str, Any], generation: int = 1) -> dict[str, Any]:
    spec = body["spec"]
    return {
        "kind": names.PROGRAM_KIND,
        "namespace": NAMESPACE,
        "name": spec["programName"],
        "generation": generation,
        "version": body["metadata"]["name"],
    }


class Cluster:
    def __init__(self, kube: Kube) -> None:
        self.kube = kube
        self.made: list[tuple[str | None, str, str]] = []  # (namespace, plural, name)

    def create_version(self, body: dict[str, Any]) -> None:
        self.kube.custom.create_namespaced_custom_object(
            names.GROUP, names.VERSION, NAMESPACE, names.VERSION_PLURAL, body
        )
        self.made.append((NAMESPACE, names.VERSION_PLURAL, body["metadata"]["name"]))

    def create_node(self, node: str, labels: dict[str, str]) -> None:
        self.kube.core.create_node(V1Node(metadata=V1ObjectMeta(name=node, labels=labels)))
        self.made.append(("", "nodes", node))

    def label_node(self, node: str, labels: dict[str, str | None]) -> None:
        self.kube.core.patch_node(node, {"metadata": {"labels": labels}})

    def place(self, body: dict[str, Any], namespace: str = NAMESPACE, **spec: Any) -> str:
        """An EbpfProgramPlacement of the version `body`, in `namespace`; `spec` overrides its fields."""
        name = f"placement-{uuid.uuid4().hex[:6]}"
        placement = {
            "apiVersion": names.API_VERSION,
            "kind": names.PLACEMENT_KIND,
            "metadata": {"name": name},
            "spec": {**entry(body), **spec},
        }
        self.kube.custom.create_namespaced_custom_object(
            names.GROUP, names.VERSION, namespace, names.PLACEMENT_PLURAL, placement
        )
        self.made.append((namespace, names.PLACEMENT_PLURAL, name))
        return name

    def create_state(self, node: str, entries: list[dict[str, Any]]) -> None:
        body = {
            "apiVersion": names.API_VERSION,
            "kind": names.NODE_STATE_PROGRAMS_KIND,
            "metadata": {"name": node},
            "spec": {"nodeName": node, "programs": entries},
        }
        self.kube.custom.create_cluster_custom_object(
            names.GROUP, names.VERSION, names.NODE_STATE_PROGRAMS_PLURAL, body
        )
        self.made.append((None, names.NODE_STATE_PROGRAMS_PLURAL, node))

    def set_entries(self, node: str, entries: list[dict[str, Any]]) -> None:
        self.kube.custom.patch_cluster_custom_object(
            names.GROUP,
            names.VERSION,
            names.NODE_STATE_PROGRAMS_PLURAL,
            node,
            {"spec": {"programs": entries}},
            _content_type="application/merge-patch+json",
        )

    def state(self, node: str) -> dict[str, Any]:
        return self.kube.custom.get_cluster_custom_object(
            names.GROUP, names.VERSION, names.NODE_STATE_PROGRAMS_PLURAL, node
        )

    def cleanup(self) -> None:
        for namespace, plural, name in reversed(self.made):
            try:
                if plural == "nodes":
                    self.kube.core.delete_node(name)
                elif namespace is None:
                    self.kube.custom.delete_cluster_custom_object(names.GROUP, names.VERSION, plural, name)
                else:
                    self.kube.custom.delete_namespaced_custom_object(
                        names.GROUP, names.VERSION, namespace, plural, name
                    )
            except ApiException as e:
                if e.status != 404:
                    raise


@pytest.fixture
def cluster(crds: Kube) -> Iterator[Cluster]:
    made = Cluster(crds)
    try:
        yield made
    finally:
        made.cleanup()


@pytest.fixture
def kernel() -> FakeBackend:
    return FakeBackend()


@pytest.fixture
def agent(crds: Kube, cluster: Cluster, kernel: FakeBackend) -> Iterator[Agent]:
    node = f"intake-{RUN}-{uuid.uuid4().hex[:4]}"
    cluster.create_node(node, {"pool": "web"})
    running = Agent(crds.rest, node, Reconciler(kernel, FakeCgroups()), trust=Trust("bpfleet-system"))
    informers = running._informers()
    for informer in informers:
        informer.start()
    assert wait_synced(informers, running.stop_event, timeout=20)
    try:
        yield running
    finally:
        for informer in informers:
            informer.stop()


def settled(agent: Agent, predicate: Any, what: str) -> None:
    """Reconciles until the agent's cache shows `predicate` true of its state."""

    def check() -> bool:
        agent.reconcile_once()
        states = agent.programs.objects()
        return bool(states) and predicate(states[0])

    wait_for(what, check, timeout=20, interval=0.1)


def test_the_agent_serves_its_own_state_and_writes_a_status_the_crd_accepts(cluster, agent, kernel):
    counter, other = version(f"counter-{RUN}"), version(f"other-{RUN}")
    for body in (counter, other):
        cluster.create_version(body)
    cluster.create_state(f"elsewhere-{RUN}", [entry(other)])  # another node's: never seen
    cluster.create_state(agent.node, [entry(counter, generation=3)])
    settled(agent, lambda s: bool((s.get("status") or {}).get("programs")), "a status")
    assert [r.name for r in kernel.programs] == [f"counter-{RUN}"]
    assert [s["metadata"]["name"] for s in agent.programs.objects()] == [agent.node]
    status = cluster.state(agent.node)["status"]
    [reported] = status["programs"]
    assert (reported["name"], reported["generation"], reported["ready"]) == (f"counter-{RUN}", 3, True)
    assert serving_version(reported) == counter["metadata"]["name"]
    assert status["observedGeneration"] == cluster.state(agent.node)["metadata"]["generation"]
    assert not cluster.state(f"elsewhere-{RUN}").get("status")

    # Nothing changed: passes write nothing.
    version_before = cluster.state(agent.node)["metadata"]["resourceVersion"]
    for _ in range(3):
        agent.reconcile_once()
    time.sleep(0.3)
    assert cluster.state(agent.node)["metadata"]["resourceVersion"] == version_before


def test_a_missing_or_forged_version_keeps_what_runs_and_the_reason_is_stored(cluster, agent, kernel):
    counter = version(f"counter-{RUN}")
    cluster.create_version(counter)
    cluster.create_state(agent.node, [entry(counter)])
    settled(agent, lambda s: bool((s.get("status") or {}).get("programs")), "served")
    loaded = dict(kernel.programs)

    missing = version(f"counter-{RUN}", source="int f(void *c) { return 0; }")  # never created
    cluster.set_entries(agent.node, [entry(missing)])
    settled(
        agent,
        lambda s: s["status"]["programs"][0].get("reason") == reasons.SOURCE_NOT_FOUND,
        "SourceNotFound stored",
    )
    assert kernel.programs == loaded
    assert cluster.state(agent.node)["status"]["programs"][0]["servingVersion"] == counter["metadata"]["name"]

    forged = version(f"counter-{RUN}", source="int f(void *c) { return 2; }")
    forged["spec"]["function"] = "g"  # after hashing: the object is not what its name says
    cluster.create_version(forged)
    cluster.set_entries(agent.node, [entry(forged)])
    settled(
        agent,
        lambda s: "does not match its hash" in s["status"]["programs"][0].get("message", ""),
        "InvalidSpec stored",
    )
    assert kernel.programs == loaded


def test_an_entry_removed_from_spec_is_unloaded_and_leaves_the_status(cluster, agent, kernel):
    counter = version(f"counter-{RUN}")
    cluster.create_version(counter)
    cluster.create_state(agent.node, [entry(counter)])
    settled(agent, lambda s: bool((s.get("status") or {}).get("programs")), "served")
    [ref] = kernel.programs
    kernel.refuse_unload.add(ref)
    cluster.set_entries(agent.node, [])
    settled(agent, lambda s: s["status"]["programs"][0].get("reason") == "Unloading", "Unloading stored")
    kernel.refuse_unload.clear()
    settled(agent, lambda s: s["status"]["programs"] == [], "the entry gone")
    assert kernel.programs == {}


# --- placements -----------------------------------------------------------------------------------


def test_a_placement_its_node_matches_is_served_without_a_spec_entry_and_unloaded_when_relabelled(
    cluster, agent, kernel
):
    counter = version(f"placed-{RUN}")
    cluster.create_version(counter)
    cluster.create_state(agent.node, [])
    cluster.place(counter, nodeSelector={"matchLabels": {"pool": "web"}})
    settled(agent, lambda s: bool((s.get("status") or {}).get("programs")), "the placed program served")
    assert [r.name for r in kernel.programs] == [f"placed-{RUN}"]
    [reported] = cluster.state(agent.node)["status"]["programs"]
    assert (reported["name"], reported["ready"]) == (f"placed-{RUN}", True)
    assert serving_version(reported) == counter["metadata"]["name"]

    cluster.label_node(agent.node, {"pool": None})  # the selector no longer picks this node
    settled(agent, lambda s: s["status"]["programs"] == [], "the entry gone")
    assert kernel.programs == {}


def test_a_spec_entry_wins_over_its_programs_placement(cluster, agent, kernel):
    old = version(f"rolled-{RUN}")
    new = version(f"rolled-{RUN}", source="int f(void *c) { return 0; }")
    for body in (old, new):
        cluster.create_version(body)
    cluster.place(old)  # every node
    cluster.create_state(agent.node, [entry(new)])  # this node is in the rollout's step
    settled(agent, lambda s: bool((s.get("status") or {}).get("programs")), "served")
    [reported] = cluster.state(agent.node)["status"]["programs"]
    assert serving_version(reported) == new["metadata"]["name"]


def test_a_placement_of_another_namespaces_program_places_nothing(cluster, agent, kernel, crds):
    """Whoever may write placements in one namespace places nothing of another's: the agent reads
    a program's versions from its own namespace only, and refuses a placement elsewhere."""
    victim = version(f"victim-{RUN}")
    cluster.create_version(victim)  # in NAMESPACE
    cluster.create_state(agent.node, [])
    elsewhere = f"tenant-{RUN}"
    crds.core.create_namespace({"metadata": {"name": elsewhere}})
    try:
        cluster.place(victim, namespace=elsewhere)  # names NAMESPACE's program, from elsewhere
        settled(agent, lambda s: (s.get("status") or {}).get("programs") == [], "a pass")
        time.sleep(0.3)
        agent.reconcile_once()
        assert kernel.programs == {}
    finally:
        crds.core.delete_namespace(elsewhere)
