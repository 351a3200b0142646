"""Staged rollouts with the real operator: a new version reaches the canary nodes first, then steps
of maxUnavailable nodes once the nodes on it report ready; a step whose nodes fail the new version
halts the rollout (Stalled, RolloutHalted) and every other node keeps the old version, also after
the operator restarts. The test plays the agents (BpfleetNodes, EbpfNodeState status)."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from typing import Any

import pytest

from bpfleet_api import conditions, names, reasons
from e2e.harness import ManagedProcess, wait_for
from e2e.kube import Kube

# The fixtures, shared with another suite; their parameters are meant to shadow these names.
# ruff: noqa: F811
from tests.apiserver.counter_fleet import fleet, namespace, operator  # noqa: F401
from tests.apiserver.operator_support import (
    agent_removed,
    agent_reports,
    agents_report,
    apply_program,
    node_states,
    program_versions,
    ready_report,
    skb_program,
    version_objects,
    wait_operator_ready,
)

pytestmark = pytest.mark.apiserver

RUN = uuid.uuid4().hex[:6]
NODE_LABEL = "bpfleet.test/rollout"
VERIFIER_LOG = "0: (b7) r0 = 1\n1: (61) r2 = *(u32 *)(r1 +4096)\ninvalid bpf_context access off=4096 size=4"


def apply(kube: Kube, namespace: str, label: str, rollout: dict[str, Any], returns: int = 1) -> None:
    apply_program(kube, skb_program(namespace, "counter", {NODE_LABEL: label}, returns, rollout=rollout))


def versions_by_node(kube: Kube, namespace: str) -> dict[str, str]:
    return program_versions(kube, namespace, "counter")


def rejected(item: dict[str, Any]) -> dict[str, Any]:
    """What an agent reports when the new version fails the verifier: the old one keeps serving."""
    return {
        **item,
        "servingVersion": "old",
        "ready": False,
        "reason": reasons.VERIFIER_REJECTED,
        "message": "the verifier rejected the new version; the previous one keeps running",
        "pods": {"selected": 0, "attached": 0, "failed": 0},
        "failures": [{"reason": reasons.VERIFIER_REJECTED, "message": "invalid bpf_context access"}],
        "buildLog": VERIFIER_LOG,
    }


def condition(kube: Kube, namespace: str, kind: str) -> dict[str, Any]:
    program = kube.program(namespace, "counter") or {}
    return next((c for c in (program.get("status") or {}).get("conditions") or [] if c["type"] == kind), {})


def rollout_status(kube: Kube, namespace: str) -> dict[str, Any]:
    return ((kube.program(namespace, "counter") or {}).get("status") or {}).get("rollout") or {}


def first_version_everywhere(kube: Kube, namespace: str, nodes: list[str]) -> str:
    wait_for("v1 on every node", lambda: sorted(versions_by_node(kube, namespace)) == nodes, 15)
    [v1] = set(versions_by_node(kube, namespace).values())
    agents_report(kube, nodes)
    wait_for("Ready", lambda: condition(kube, namespace, conditions.READY).get("status") == "True", 15)
    return v1


def test_a_failing_version_halts_after_its_first_step_and_the_rest_keep_the_old_one(
    kube: Kube, operator: ManagedProcess, namespace: str, fleet
):
    label = f"halt-{RUN}"
    nodes = sorted(fleet("halt", 6, label))
    apply(kube, namespace, label, {"maxUnavailable": 2})
    v1 = first_version_everywhere(kube, namespace, nodes)

    apply(kube, namespace, label, {"maxUnavailable": 2}, returns=0)
    wait_for(
        "a first step of 2 nodes",
        lambda: sum(v != v1 for v in versions_by_node(kube, namespace).values()) == 2,
        15,
    )
    time.sleep(1)  # a step is 2 nodes: no third comes
    placed = versions_by_node(kube, namespace)
    step = sorted(n for n, v in placed.items() if v != v1)
    assert len(step) == 2, placed
    [v2] = {placed[n] for n in step}
    for node in step:
        agent_reports(kube, node, rejected)
    agents_report(kube, [n for n in nodes if n not in step])

    halted = f"rollout of version {v2} halted: {reasons.VERIFIER_REJECTED} on {', '.join(step)}"
    # Reports wake the program at once: the first halt may name one node, the next both.
    wait_for(
        "halted on both nodes of the step",
        lambda: (
            condition(kube, namespace, conditions.STALLED).get("reason") == reasons.ROLLOUT_HALTED
            and halted in condition(kube, namespace, conditions.STALLED)["message"]
        ),
        15,
    )
    message = condition(kube, namespace, conditions.STALLED)["message"]
    assert "invalid bpf_context access" in message and f"4 of 6 nodes keep version {v1}" in message
    assert condition(kube, namespace, conditions.READY)["status"] == "False"
    assert rollout_status(kube, namespace) == {
        "version": v2,
        "updatedNodes": 2,
        "totalNodes": 6,
        "halted": True,
    }
    program = kube.program(namespace, "counter") or {}
    failure = program["status"]["failures"][0]
    assert failure["node"] in step and "invalid bpf_context access off=4096" in failure["message"]

    time.sleep(2)  # several reconciles later: nothing moved on
    assert versions_by_node(kube, namespace) == placed

    # Level-triggered: a restarted operator reads the same halt from the nodes' states, and writes
    # no node's spec at all (a spec write bumps metadata.generation): not even while it has not
    # seen every program yet.
    generations = {s["metadata"]["name"]: s["metadata"]["generation"] for s in node_states(kube)}
    operator.stop()
    operator.start()
    wait_operator_ready(operator.log_path)
    time.sleep(2)
    assert versions_by_node(kube, namespace) == placed
    assert rollout_status(kube, namespace)["halted"] is True
    after = {s["metadata"]["name"]: s["metadata"]["generation"] for s in node_states(kube)}
    assert {n: after[n] for n in nodes} == {n: generations[n] for n in nodes}


def one_node_stepped(kube: Kube, namespace: str, label: str, nodes: list[str]) -> tuple[str, str]:
    """v1 everywhere, then a new version one node at a time: (the first step's node, the version)."""
    apply(kube, namespace, label, {"maxUnavailable": 1})
    v1 = first_version_everywhere(kube, namespace, nodes)
    apply(kube, namespace, label, {"maxUnavailable": 1}, returns=0)
    others = len(nodes) - 1
    wait_for("a first step", lambda: list(versions_by_node(kube, namespace).values()).count(v1) == others, 15)
    [(node, version)] = [(n, v) for n, v in versions_by_node(kube, namespace).items() if v != v1]
    return node, version


def test_an_operator_down_mid_rollout_resumes_at_its_step_and_goes_on_from_reports_made_meanwhile(
    kube: Kube, operator: ManagedProcess, namespace: str, fleet
):
    """Level-triggered, not remembered: after a restart the rollout neither starts over nor skips
    a step, and the step's nodes reporting ready while no operator ran moves it on."""
    nodes = sorted(fleet("resume", 4, f"resume-{RUN}"))
    first, v2 = one_node_stepped(kube, namespace, f"resume-{RUN}", nodes)

    operator.stop()
    try:
        agent_reports(kube, first)  # ready on v2 while nobody watches
    finally:
        operator.start()
    wait_operator_ready(operator.log_path)
    wait_for(
        "the next step, and only it",
        lambda: list(versions_by_node(kube, namespace).values()).count(v2) == 2,
        15,
    )
    time.sleep(1)
    updated = sorted(n for n, v in versions_by_node(kube, namespace).items() if v == v2)
    assert first in updated and len(updated) == 2, versions_by_node(kube, namespace)
    assert rollout_status(kube, namespace) == {"version": v2, "updatedNodes": 2, "totalNodes": 4}

    def reported_then(done: Callable[[], bool]) -> Callable[[], bool]:
        def check() -> bool:
            agents_report(kube, nodes)  # each step's nodes say ready: the next step follows
            return done()

        return check

    everywhere = reported_then(lambda: set(versions_by_node(kube, namespace).values()) == {v2})
    wait_for("every node", everywhere, 20, interval=0.3)
    ready = reported_then(lambda: condition(kube, namespace, conditions.READY).get("status") == "True")
    wait_for("Ready", ready, 15, interval=0.3)


def test_a_node_removed_in_the_middle_of_its_step_does_not_hold_the_rollout(
    kube: Kube, namespace: str, fleet
):
    """A node drained and deleted (its agent with it) while it takes the new version is no longer
    a target: the next step follows without its report, and the rollout completes on the rest."""
    nodes = sorted(fleet("drain", 4, f"drain-{RUN}"))
    gone, v2 = one_node_stepped(kube, namespace, f"drain-{RUN}", nodes)
    kube.core.delete_node(gone)
    agent_removed(kube, gone)
    rest = [n for n in nodes if n != gone]

    def next_step() -> bool:
        placed = versions_by_node(kube, namespace)
        return gone not in placed and [placed.get(n) for n in rest].count(v2) == 1

    wait_for("the next step without the removed node's report", next_step, 20)
    assert rollout_status(kube, namespace) == {"version": v2, "updatedNodes": 1, "totalNodes": 3}

    def reported_then_everywhere() -> bool:
        agents_report(kube, rest)
        return [versions_by_node(kube, namespace).get(n) for n in rest] == [v2] * 3 and (
            condition(kube, namespace, conditions.READY).get("status") == "True"
        )

    wait_for("every remaining node on the new version, Ready", reported_then_everywhere, 20, interval=0.3)
    assert rollout_status(kube, namespace) == {"version": v2, "updatedNodes": 3, "totalNodes": 3}


def test_a_canary_goes_first_then_steps_until_every_node_runs_the_new_version(
    kube: Kube, namespace: str, fleet
):
    label = f"canary-{RUN}"
    nodes = sorted(fleet("canary", 4, label, canary=3))
    canary = nodes[3]
    rollout = {"maxUnavailable": "50%", "canary": {"nodeSelector": {"matchLabels": {"canary": "yes"}}}}
    apply(kube, namespace, label, rollout)
    v1 = first_version_everywhere(kube, namespace, nodes)

    apply(kube, namespace, label, rollout, returns=0)
    wait_for("the canary first", lambda: versions_by_node(kube, namespace)[canary] != v1, 15)
    v2 = versions_by_node(kube, namespace)[canary]
    time.sleep(1.5)
    assert [n for n, v in versions_by_node(kube, namespace).items() if v == v2] == [canary]
    assert rollout_status(kube, namespace) == {"version": v2, "updatedNodes": 1, "totalNodes": 4}
    assert condition(kube, namespace, conditions.READY)["reason"] == "Progressing"

    agents_report(kube, nodes, ready_report)
    wait_for("a step of 2 more", lambda: list(versions_by_node(kube, namespace).values()).count(v2) == 3, 15)
    agents_report(kube, nodes, ready_report)
    wait_for("every node", lambda: set(versions_by_node(kube, namespace).values()) == {v2}, 15)
    agents_report(kube, nodes, ready_report)
    wait_for("Ready", lambda: condition(kube, namespace, conditions.READY).get("status") == "True", 15)
    assert rollout_status(kube, namespace) == {"version": v2, "updatedNodes": 4, "totalNodes": 4}
    # No node names the old version any more: it is deleted.
    wait_for(
        "the old version deleted",
        lambda: (
            v1
            not in [
                v["metadata"]["name"]
                for v in kube.custom.list_namespaced_custom_object(
                    names.GROUP, names.VERSION, namespace, names.VERSION_PLURAL
                )["items"]
            ]
        ),
        10,
    )


def test_a_restarted_operator_deletes_its_earlier_versions_that_no_node_needs(
    kube: Kube, operator: ManagedProcess, namespace: str
):
    """Which versions exist is listed once at start (metadata only, every program at once): a
    version made before a restart is still found, and collected once nothing needs it."""
    labels = {NODE_LABEL: f"none-{RUN}"}  # no node: nothing holds an old version
    apply_program(kube, skb_program(namespace, "counter", labels, returns=1))
    wait_for("the first version", lambda: len(version_objects(kube, names.PROGRAM_LABEL, "counter")) == 1)
    [first] = [v["metadata"]["name"] for v in version_objects(kube, names.PROGRAM_LABEL, "counter")]
    operator.stop()
    apply_program(kube, skb_program(namespace, "counter", labels, returns=0))  # a new version, unseen
    operator.start()
    wait_operator_ready(operator.log_path)

    def only_the_new_one() -> bool:
        listed = [v["metadata"]["name"] for v in version_objects(kube, names.PROGRAM_LABEL, "counter")]
        return len(listed) == 1 and listed != [first]

    wait_for("the earlier version deleted, the new one made", only_the_new_one, 30)
