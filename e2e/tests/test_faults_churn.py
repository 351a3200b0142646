"""Faults under pod churn: the agent holds news of pods coming and going for up to a second
(status_hold.py), so a kill -9 in the middle of churn may lose what it held. The restarted agent
must tell the truth anyway: every pod there covered, every pod gone detached, and the counts exact.
Expectations come from the API server (the pods the simulator made) and the kernel (bpftool)."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

from e2e.harness import wait_for
from e2e.kube import Kube, cgroup_programs
from e2e.tests.test_faults import PROGRAM, _manifest, _pods_summary, _restarted_and_reconciled

pytestmark = pytest.mark.e2e

CHURN = 8  # pods made in a burst; a few of them go again, some while the agent is down


def test_an_agent_killed_during_pod_churn_reports_exact_counts_and_covers_every_pod(
    kube: Kube, node_a, namespace: str
):
    first = node_a.create_pod(namespace, "web-first", {"app": "web"})
    kube.apply(namespace, _manifest(PROGRAM))
    wait_for("the program Ready on its pod", lambda: kube.is_ready(namespace, PROGRAM), timeout=20)
    program_id = kube.node_program(namespace, PROGRAM, node_a.name)["status"]["programId"]
    links = Path(kube.node_program(namespace, PROGRAM, node_a.name)["status"]["pinPath"]) / "links"

    burst = [node_a.create_pod(namespace, f"web-{i}", {"app": "web"}) for i in range(CHURN)]
    going = burst[: CHURN // 2]
    node_a.delete_pod(going[0])  # within the agent's second: news it may be holding
    node_a.agent.kill(signal.SIGKILL)
    try:
        for pod in going[1:]:  # and while it is down
            node_a.delete_pod(pod)
    finally:
        _restarted_and_reconciled(node_a.agent)

    staying = [first, *burst[CHURN // 2 :]]
    expected = f"{len(staying)}/{len(staying)}"
    wait_for(f"the program's pods {expected}", lambda: _pods_summary(kube, namespace) == expected, timeout=15)
    reported = kube.node_program(namespace, PROGRAM, node_a.name)["status"]["pods"]
    assert reported == {"selected": len(staying), "attached": len(staying), "failed": 0}
    for pod in staying:
        assert [p["id"] for p in cgroup_programs(pod.pod_cgroup)] == [program_id], pod.name
        assert (links / pod.uid).exists()
    wait_for(
        "the gone pods' links unpinned",
        lambda: not any((links / pod.uid).exists() for pod in going),
        timeout=10,
    )
