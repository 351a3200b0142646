"""The fleet benchmark's simulated agents on a real API server: they join (Node, BpfleetNode),
report each node's entries through the agent's status code, once per change."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from bpfleet_api import names, reasons
from e2e.fleet_agents import SimulatedFleet
from e2e.harness import wait_for
from e2e.kube import Kube
from tests.apiserver.test_agent_intake import NAMESPACE, Cluster, entry, version

pytestmark = pytest.mark.apiserver

RUN = uuid.uuid4().hex[:6]


@pytest.fixture
def fleet(crds: Kube) -> Iterator[SimulatedFleet]:
    simulated = SimulatedFleet(
        crds.api, [f"sim-{RUN}-{i}" for i in range(3)], pods_per_program=4, workers=2, rest=crds.rest
    )
    simulated.register()
    simulated.start()
    try:
        yield simulated
    finally:
        simulated.stop()
        simulated.remove()


def test_simulated_agents_report_every_entry_once(crds: Kube, fleet: SimulatedFleet):
    cluster = Cluster(crds)
    try:
        for node in fleet.nodes:
            bpfleet_node = crds.custom.get_cluster_custom_object(
                names.GROUP, names.VERSION, names.NODE_STATE_PLURAL, node
            )
            assert bpfleet_node["status"]["agentStartedAt"]
        counter = version(f"fleet-{RUN}")
        cluster.create_version(counter)
        missing = version(f"gone-{RUN}")
        for node in fleet.nodes:
            cluster.create_state(node, [entry(counter), entry(missing)])

        def reported() -> bool:
            return all(
                len((cluster.state(n).get("status") or {}).get("programs") or []) == 2 for n in fleet.nodes
            )

        wait_for("every node reporting", reported, timeout=20)
        writes = fleet.status_writes
        for node in fleet.nodes:
            by_name = {e["name"]: e for e in cluster.state(node)["status"]["programs"]}
            served = by_name[f"fleet-{RUN}"]
            assert (served["ready"], served["reason"], served["namespace"]) == (True, "Attached", NAMESPACE)
            assert served["pods"] == {"selected": 4, "attached": 4, "failed": 0}
            assert by_name[f"gone-{RUN}"]["reason"] == reasons.SOURCE_NOT_FOUND
        assert writes == len(fleet.nodes)  # one write per node for both entries

        # An entry removed from spec leaves the status: the simulated kernel unloads at once.
        cluster.set_entries(fleet.nodes[0], [entry(counter)])
        wait_for(
            "the entry gone",
            lambda: len(cluster.state(fleet.nodes[0])["status"]["programs"]) == 1,
            timeout=20,
        )
    finally:
        cluster.cleanup()
