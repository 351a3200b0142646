"""Which node statuses wait (status_hold): pods coming and going at most once a second, queued
builds until their end; anything else at once, taking what was held with it."""

from __future__ import annotations

import pytest

from node_agent.status import only_pods_moved
from tests.unit.agent_harness import Node
from tests.unit.builders import node_program, pod

WEB = {"app": "web"}


def entry(name: str = "counter", **fields) -> dict:
    base = {
        "kind": "EbpfProgram",
        "namespace": "shop",
        "name": name,
        "version": f"{name}-v1",
        "generation": 1,
        "ready": True,
        "reason": "Attached",
        "pods": {"selected": 1, "attached": 1, "failed": 0},
    }
    return {**base, **fields}


def status(*entries: dict, generation: int = 1) -> dict:
    return {"observedGeneration": generation, "programs": list(entries)}


PENDING = {"ready": False, "reason": "PodsPending", "message": "1 pods have no cgroup yet"}
TWO = {"pods": {"selected": 2, "attached": 2, "failed": 0}}


@pytest.mark.parametrize(
    "before, after",
    [
        (status(entry()), status(entry(**TWO))),  # a pod more, attached
        (status(entry()), status(entry(pods={"selected": 2, "attached": 1, "failed": 0}, **PENDING))),
        (status(entry(**PENDING)), status(entry(**TWO))),  # its cgroup came: Attached again
    ],
)
def test_pods_coming_and_going_is_only_pods_moving(before, after):
    assert only_pods_moved(before, after)


@pytest.mark.parametrize(
    "before, after",
    [
        (status(entry()), status(entry())),  # nothing changed: nothing to hold either
        (status(entry()), status(entry(ready=False, reason="AttachFailed", message="1 of 2 pods failed"))),
        (status(entry(reason="Queued", ready=False)), status(entry())),  # a build done
        (status(entry()), status(entry(**TWO, version="counter-v2"))),  # a new version
        (status(entry()), status(entry(), entry("other"))),  # a new entry
        (status(entry(), entry("other")), status(entry(**TWO))),  # an entry gone
        (status(entry()), status(entry(**TWO), generation=2)),  # a new spec observed
        (status(entry()), status(entry(**TWO, failures=[{"reason": "AttachFailed"}]))),
    ],
)
def test_anything_else_is_not(before, after):
    assert not only_pods_moved(before, after)


@pytest.fixture
def clock(monkeypatch):
    now = [1000.0]
    monkeypatch.setattr("node_agent.status_hold.time.monotonic", lambda: now[0])
    return now


def churning_node() -> Node:
    node = Node(pods=[pod("web-1", WEB)], cgroups={"uid-web-1"})
    node.serve(node_program())
    node.reconcile()
    assert len(node.api.writes) == 1
    return node


def test_pod_churn_is_written_at_most_once_a_second_the_first_at_once(clock):
    node = churning_node()
    clock[0] += 5  # quiet since
    node.agent.pods.items.append(pod("web-2", WEB, phase="Pending"))  # no cgroup yet
    node.reconcile()
    assert len(node.api.writes) == 2 and node.entry("counter")["reason"] == "PodsPending"
    clock[0] += 0.1
    node.agent.reconciler.cgroups.present.add("uid-web-2")  # kubelet made it
    result = node.reconcile()
    assert len(node.api.writes) == 2, "held: its only news is a pod attached"
    assert node.agent._next_pass_in(result) == pytest.approx(0.9)
    clock[0] += 0.9
    node.reconcile()
    assert len(node.api.writes) == 3
    assert node.entry("counter")["pods"] == {"selected": 2, "attached": 2, "failed": 0}


def test_a_failure_is_written_at_once_even_after_a_pods_write(clock):
    node = churning_node()
    clock[0] += 0.2
    node.agent.pods.items.append(pod("web-2", WEB))  # running, and no cgroup: a failure
    node.reconcile()
    assert len(node.api.writes) == 2 and node.entry("counter")["reason"] == "AttachFailed"


def test_pods_news_held_goes_out_with_the_next_news(clock):
    node = churning_node()
    clock[0] += 0.2
    node.agent.reconciler.cgroups.present.add("uid-web-2")
    node.agent.pods.items.append(pod("web-2", WEB))
    node.reconcile()
    assert len(node.api.writes) == 1  # a pod attached, within the second: held
    node.serve(node_program(), node_program("other"))  # a new program (built in the pass): news
    node.reconcile()
    assert len(node.api.writes) == 2
    assert node.entry("counter")["pods"]["attached"] == 2 and node.entry("other")["ready"]
