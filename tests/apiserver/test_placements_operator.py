"""Placements with the real operator: a program's version reaches every node whose agent reads
placements through one EbpfProgramPlacement write, not a spec write per node; an older agent (one
that does not say it reads placements) gets the program in its node's spec, and loses or regains
it as agents of either kind replace each other, without its effective version changing; a staged
rollout's steps are spec entries, removed only once the moved placement is seen; a deleted
program's placement goes with it. The test plays the agents (BpfleetNodes, EbpfNodeState status).
"""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from bpfleet_api import conditions, names
from e2e.harness import wait_for
from e2e.kube import Kube

# The fixtures, shared with another suite; their parameters are meant to shadow these names.
# ruff: noqa: F811
from tests.apiserver.counter_fleet import fleet, namespace, operator  # noqa: F401
from tests.apiserver.operator_support import (
    agent_restarts,
    agents_report,
    apply_program,
    node_state,
    program_versions,
    skb_program,
)

pytestmark = pytest.mark.apiserver

RUN = uuid.uuid4().hex[:6]
NODE_LABEL = "bpfleet.test/placements"


def apply(kube: Kube, namespace: str, label: str, returns: int = 1, **spec: Any) -> None:
    apply_program(kube, skb_program(namespace, "counter", {NODE_LABEL: label}, returns, **spec))


def placement(kube: Kube, namespace: str) -> dict[str, Any] | None:
    name = names.placement_name(names.PROGRAM_KIND, "counter")
    found = [
        p
        for p in kube.placements()
        if (p["metadata"]["namespace"], p["metadata"]["name"]) == (namespace, name)
    ]
    return found[0] if found else None


def spec_entries(kube: Kube, node: str) -> list[dict[str, Any]]:
    return list(((node_state(kube, node) or {}).get("spec") or {}).get("programs") or [])


def spec_writes(kube: Kube, nodes: list[str]) -> dict[str, int]:
    """Each node state's metadata.generation: a spec write bumps it (status has its own subresource)."""
    return {n: (node_state(kube, n) or {})["metadata"]["generation"] for n in nodes}


def ready(kube: Kube, namespace: str, nodes: list[str]) -> bool:
    agents_report(kube, nodes)
    program = kube.program(namespace, "counter") or {}
    status = program.get("status") or {}
    cond = next((c for c in status.get("conditions") or [] if c["type"] == conditions.READY), {})
    current = status.get("observedGeneration") == program.get("metadata", {}).get("generation")
    return current and cond.get("status") == "True" and (status.get("nodes") or {}).get("ready") == len(nodes)


def test_a_rollout_and_a_deletion_are_placement_writes_and_no_node_spec_write(
    kube: Kube, namespace: str, fleet
):
    label = f"default-{RUN}"
    nodes = fleet("default", 3, label)
    before = spec_writes(kube, nodes)

    apply(kube, namespace, label)
    wait_for("v1 on every node", lambda: sorted(program_versions(kube, namespace, "counter")) == nodes, 15)
    [v1] = set(program_versions(kube, namespace, "counter").values())
    found = placement(kube, namespace)
    assert found is not None and found["spec"]["version"] == v1
    assert found["spec"]["nodeSelector"] == {"matchLabels": {NODE_LABEL: label}}
    wait_for("Ready on 3 nodes", lambda: ready(kube, namespace, nodes), 15, 0.2)

    apply(kube, namespace, label, returns=0)
    wait_for("the placement moved", lambda: (placement(kube, namespace) or {})["spec"]["version"] != v1, 15)
    wait_for("Ready on the new version", lambda: ready(kube, namespace, nodes), 15, 0.2)
    assert set(program_versions(kube, namespace, "counter").values()) == {
        placement(kube, namespace)["spec"]["version"]
    }
    assert all(spec_entries(kube, n) == [] for n in nodes)
    assert spec_writes(kube, nodes) == before
    # Cleared once made, and not tracked again by the writes since: no field ownership in etcd.
    assert [(node_state(kube, n) or {})["metadata"].get("managedFields") for n in nodes] == [None] * 3

    kube.kubectl("delete", names.PROGRAM_PLURAL, "counter", "-n", namespace, "--wait=false")
    wait_for("the placement gone", lambda: placement(kube, namespace) is None, 15)

    def gone() -> bool:
        agents_report(kube, nodes)  # each unloads it: nothing asks for it any more
        return kube.program(namespace, "counter") is None

    wait_for("the program deleted", gone, 15, 0.2)
    assert spec_writes(kube, nodes) == before


def test_an_older_agent_gets_the_program_in_its_spec_and_agents_replacing_each_other_keep_its_version(
    kube: Kube, namespace: str, fleet
):
    label = f"mixed-{RUN}"
    [new] = fleet("new", 1, label)
    [old] = fleet("old", 1, label, reads_placements=False)
    apply(kube, namespace, label)
    wait_for(
        "on both nodes",
        lambda: sorted(program_versions(kube, namespace, "counter")) == sorted([new, old]),
        15,
    )
    [version] = set(program_versions(kube, namespace, "counter").values())
    assert spec_entries(kube, new) == []
    assert [e["version"] for e in spec_entries(kube, old)] == [version]

    agent_restarts(kube, old)  # upgraded: it reads placements now
    wait_for("the upgraded node's entry removed", lambda: spec_entries(kube, old) == [], 15)
    agent_restarts(kube, new, reads_placements=False)  # rolled back to an older agent
    wait_for("the older agent's entry written", lambda: len(spec_entries(kube, new)) == 1, 15)
    assert spec_entries(kube, new)[0]["version"] == version
    assert program_versions(kube, namespace, "counter") == {new: version, old: version}


def test_a_staged_rollouts_steps_are_spec_entries_removed_once_the_placement_has_moved(
    kube: Kube, namespace: str, fleet
):
    label = f"staged-{RUN}"
    nodes = fleet("staged", 3, label)
    rollout = {"maxUnavailable": 1}
    apply(kube, namespace, label, rollout=rollout)
    wait_for("v1 on every node", lambda: sorted(program_versions(kube, namespace, "counter")) == nodes, 15)
    [v1] = set(program_versions(kube, namespace, "counter").values())
    wait_for("Ready", lambda: ready(kube, namespace, nodes), 15, 0.2)

    apply(kube, namespace, label, returns=0, rollout=rollout)
    wait_for(
        "a first step", lambda: list(program_versions(kube, namespace, "counter").values()).count(v1) == 2, 15
    )
    assert (placement(kube, namespace) or {})["spec"]["version"] == v1  # the others keep it
    [(stepped, v2)] = [(n, v) for n, v in program_versions(kube, namespace, "counter").items() if v != v1]
    assert [e["version"] for e in spec_entries(kube, stepped)] == [v2]

    # Each step reports ready; no node that reached v2 is ever asked for v1 again, also while the
    # placement moves and the steps' entries go (node states are read before placements: the
    # placement is written first).
    on_v2: set[str] = set()

    def completed() -> bool:
        agents_report(kube, nodes)
        now = program_versions(kube, namespace, "counter")
        assert not [n for n in on_v2 if now.get(n) != v2], now
        on_v2.update(n for n, v in now.items() if v == v2)
        return all(spec_entries(kube, n) == [] for n in nodes) and len(on_v2) == 3

    wait_for("every node on v2 by the placement alone", completed, 30, 0.1)
    assert (placement(kube, namespace) or {})["spec"]["version"] == v2
    wait_for("Ready on v2", lambda: ready(kube, namespace, nodes), 15, 0.2)
