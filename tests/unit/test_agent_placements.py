"""The EbpfProgramPlacements an agent reads: which it accepts (a placement places only a program of
its own namespace, a ClusterEbpfProgram only from the system namespace), which pick its node, how
they merge with the node's own entries, and what a real agent on the fake kernel does with them."""

from __future__ import annotations

from typing import Any

import pytest

from bpfleet_api import names
from bpfleet_operator import placement as placement_plan
from bpfleet_operator.kinds import ProgramKey
from node_agent.intake import Entry
from node_agent.kernel.backend import ProgramRef
from node_agent.model import EntryKey
from node_agent.placements import merged, placed_entries
from tests.unit.agent_harness import TRUST, Labelled, Node
from tests.unit.builders import cluster_program, entry_of, hashed, node_program, parsed, pod

WEB = {"app": "web"}
POOL_A = {"matchLabels": {"pool": "a"}}
SHOP_P = EntryKey(names.PROGRAM_KIND, "shop", "p")
ADMIN = EntryKey(names.CLUSTER_PROGRAM_KIND, "", "admin")


def placement_spec(
    key: EntryKey = SHOP_P, version: str = "p-v1", generation: int = 1, **extra: Any
) -> dict[str, Any]:
    # The operator's own builder: the wire contract the agent reads.
    return {
        **placement_plan.spec(ProgramKey(key.kind, key.namespace, key.name), generation, version, None),
        **extra,
    }


def placement(namespace: str, name: str, spec: Any) -> dict[str, Any]:
    """An EbpfProgramPlacement object as the agent's watch has it."""
    return {
        "apiVersion": f"{names.GROUP}/{names.VERSION}",
        "kind": names.PLACEMENT_KIND,
        "metadata": {"namespace": namespace, "name": name},
        "spec": spec,
    }


def placing(version: dict[str, Any], node_selector: dict[str, Any] | None = None) -> dict[str, Any]:
    """The placement of the program of `version`, naming it, where the operator writes it."""
    spec = entry_of(hashed(version))
    if node_selector is not None:
        spec["nodeSelector"] = node_selector
    return placement(version["metadata"]["namespace"], f"place-{spec['name']}", spec)


def store(node: Node, version: dict[str, Any]) -> dict[str, Any]:
    meta = hashed(version)["metadata"]
    node.api.versions[(meta["namespace"], meta["name"])] = version
    return version


def web_node() -> Node:
    node = Node(pods=[pod("web-1", WEB)], cgroups={"uid-web-1"})
    node.serve()  # a spec that names nothing: whatever runs comes from the placements
    return node


def loaded(node: Node) -> set[ProgramRef]:
    return set(node.kernel.loaded())


# placed_entries, the pure part


def test_a_placement_of_a_program_of_its_own_namespace_is_accepted():
    found, problems = placed_entries([placement("shop", "p", placement_spec(generation=4))], {}, TRUST)
    assert found == [Entry(SHOP_P, 4, "p-v1")] and problems == []


def test_a_placement_of_another_namespaces_program_is_refused_and_named():
    found, problems = placed_entries([placement("other", "steal", placement_spec())], {}, TRUST)
    assert found == []
    [problem] = problems
    assert "other/steal" in problem and "shop/p" in problem


@pytest.mark.parametrize(
    ("namespace", "accepted"), [(TRUST.system_namespace, True), ("shop", False), ("other", False)]
)
def test_a_cluster_program_is_placed_only_from_the_system_namespace(namespace: str, accepted: bool):
    found, problems = placed_entries([placement(namespace, "admin", placement_spec(ADMIN))], {}, TRUST)
    assert [e.key for e in found] == ([ADMIN] if accepted else [])
    assert len(problems) == (0 if accepted else 1)


def test_a_placement_whose_node_selector_does_not_pick_the_node_gives_no_entry_and_no_problem():
    spec = placement_spec(nodeSelector=POOL_A)
    assert placed_entries([placement("shop", "p", spec)], {"pool": "b"}, TRUST) == ([], [])
    assert placed_entries([placement("shop", "p", spec)], {}, TRUST) == ([], [])
    [picked], _ = placed_entries([placement("shop", "p", spec)], {"pool": "a", "zone": "z"}, TRUST)
    assert picked.key == SHOP_P


@pytest.mark.parametrize(
    "spec",
    [
        None,
        "EbpfProgram shop/p",
        placement_spec(generation="1"),
        placement_spec(generation=True),
        placement_spec(version=""),
        placement_spec(nodeSelector=[{"matchLabels": {"pool": "a"}}]),
        placement_spec(nodeSelector={"matchExpressions": [{"key": "pool", "operator": "Near"}]}),
        placement_spec(nodeSelector={"matchExpressions": [{"operator": "Exists"}]}),
        placement_spec(nodeSelector={"matchLabels": ["pool"]}),
        placement_spec(EntryKey("SuperEbpfProgram", "shop", "p")),
    ],
    ids=[
        "spec missing",
        "spec a string",
        "generation a string",
        "generation a bool",
        "version empty",
        "nodeSelector a list",
        "unknown operator",
        "expression without key",
        "matchLabels a list",
        "unknown kind",
    ],
)
def test_a_malformed_placement_is_refused_with_a_problem_and_the_others_still_count(spec: Any):
    good = placement("shop", "good", placement_spec(EntryKey(names.PROGRAM_KIND, "shop", "q")))
    found, problems = placed_entries([placement("shop", "bad", spec), good], {"pool": "a"}, TRUST)
    assert [e.key.name for e in found] == ["q"]
    [problem] = problems
    assert problem.startswith("placement shop/bad:")


def test_a_placement_without_metadata_is_refused_not_raised():
    found, problems = placed_entries([{"spec": placement_spec()}], {}, TRUST)
    assert found == [] and len(problems) == 1


def test_of_two_placements_of_one_program_the_first_by_namespace_and_name_wins():
    later = placement("shop", "p-b", placement_spec(version="p-v2"))
    first = placement("shop", "p-a", placement_spec(version="p-v1"))
    [entry], problems = placed_entries([later, first], {}, TRUST)
    assert entry.version == "p-v1" and problems == []


def test_merged_the_nodes_own_entry_wins_over_the_placements():
    other = EntryKey(names.PROGRAM_KIND, "shop", "q")
    placed = [Entry(SHOP_P, 1, "p-v1"), Entry(other, 1, "q-v1")]
    own = [Entry(SHOP_P, 2, "p-v2")]
    assert sorted(merged(placed, own), key=lambda e: e.key) == [
        Entry(SHOP_P, 2, "p-v2"),
        Entry(other, 1, "q-v1"),
    ]
    assert merged(placed, []) == placed and merged([], own) == own


# Through a real agent on the fake kernel


def test_a_placement_that_picks_the_node_loads_its_program_with_an_empty_spec():
    node = web_node()
    version = store(node, node_program(generation=3))
    node.labels["pool"] = "a"
    node.placements.append(placing(version, POOL_A))
    node.reconcile()
    assert loaded(node) == {parsed(version, TRUST).ref}
    assert node.states[0]["spec"]["programs"] == []
    status = node.entry("counter")
    assert (status["kind"], status["namespace"], status["version"], status["generation"]) == (
        names.PROGRAM_KIND,
        "shop",
        "counter-v1",
        3,
    )
    assert (status["ready"], status["reason"]) == (True, "Attached")
    assert status["pods"] == {"selected": 1, "attached": 1, "failed": 0}


def test_a_cluster_program_placed_from_the_system_namespace_is_loaded():
    node = web_node()
    version = store(node, cluster_program(selector=WEB, namespaces=["shop"]))
    node.placements.append(placing(version))
    node.reconcile()
    assert loaded(node) == {parsed(version, TRUST).ref}
    assert node.entry("admin")["ready"] is True


def placed_in_pool_a() -> Node:
    """A node labelled pool=a running a program placed on pool a."""
    node = web_node()
    version = store(node, node_program())
    node.labels["pool"] = "a"
    node.placements.append(placing(version, POOL_A))
    node.reconcile()
    assert loaded(node) == {parsed(version, TRUST).ref}
    return node


def test_relabelling_the_node_out_of_the_placements_selector_unloads_its_program():
    node = placed_in_pool_a()
    node.labels["pool"] = "b"  # the Node watch's labels, changed in place
    node.reconcile()
    assert loaded(node) == set() and node.kernel.links == {}
    assert [e["name"] for e in node.status.get("programs", [])] == []


def test_a_spec_entry_naming_another_version_wins_over_the_placement():
    node = web_node()
    v1 = store(node, node_program())
    v2 = node_program(source="int f(struct __sk_buff *skb) { return 0; }")
    v2["metadata"]["name"] = "counter-v2"
    node.placements.append(placing(v1))
    node.serve(v2)  # a staged rollout's step: this node runs v2, the placement still names v1
    node.reconcile()
    assert loaded(node) == {parsed(v2, TRUST).ref} != {parsed(v1, TRUST).ref}
    assert node.entry("counter")["version"] == "counter-v2"
    assert ("shop", "counter-v1") not in node.api.reads
    # The step's entry removed, the node falls back to the placement's version.
    node.serve()
    node.reconcile()
    assert loaded(node) == {parsed(v1, TRUST).ref}
    assert node.entry("counter")["version"] == "counter-v1"


def test_a_placement_in_another_namespace_is_refused_and_loads_nothing():
    node = web_node()
    version = store(node, node_program())
    stolen = placing(version)
    stolen["metadata"]["namespace"] = "other"
    node.placements.append(stolen)
    node.reconcile()
    assert loaded(node) == set() and node.kernel.loads == []
    assert node.api.reads == []  # refused before its version is even asked for
    assert node.status.get("programs", []) == []


class Unknown:
    """A Node watch that has not listed the node (or lost it): its labels are not known."""

    def get(self, name: str) -> dict[str, str] | None:
        return None


def test_while_the_nodes_labels_are_unknown_a_pass_unloads_nothing_that_runs():
    node = placed_in_pool_a()
    running, writes = loaded(node), len(node.api.writes)
    node.agent.node_labels = Unknown()  # type: ignore[assignment]
    node.placements.clear()  # known labels and no placement: it would be unloaded
    node.reconcile()
    assert loaded(node) == running and len(node.api.writes) == writes
    # Known again: now its absence from the placements counts.
    node.agent.node_labels = Labelled(node.name, node.labels)  # type: ignore[assignment]
    node.reconcile()
    assert loaded(node) == set()
