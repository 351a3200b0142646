"""Acceptance: killing the agent does not stop the data plane, and the new agent adopts what runs."""

from __future__ import annotations

import signal
import sys
from pathlib import Path

from e2e.harness import wait_for
from e2e.kube import Kube, cgroup_id, cgroup_programs, traffic_counts
from e2e.podsim import spawn_in_cgroup
from e2e.tools import REPO_ROOT

EXAMPLE = REPO_ROOT / "examples" / "pod-traffic-counter.yaml"
PROGRAM = "web-egress-traffic"
# One datagram every 5 ms to the discard port, for as long as the test runs.
SENDER = (
    "import socket, time\n"
    "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
    "while True:\n"
    "    s.sendto(b'x' * 64, ('127.0.0.1', 9)); time.sleep(0.005)\n"
)


def test_sigkill_keeps_counting_and_restart_adopts(kube: Kube, node_a, namespace: str):
    pods = [node_a.create_pod(namespace, f"web-{i}", {"app": "web"}) for i in range(2)]
    kube.apply(namespace, EXAMPLE)
    wait_for("READY True", lambda: kube.is_ready(namespace, PROGRAM), timeout=10)
    node_status = kube.node_program(namespace, PROGRAM, node_a.name)["status"]
    program_id, traffic = node_status["programId"], Path(node_status["pinPath"]) / "maps" / "traffic"
    key = cgroup_id(pods[0].pod_cgroup)

    sender = spawn_in_cgroup([sys.executable, "-c", SENDER], pods[0].container_cgroup)
    try:
        wait_for("traffic counted", lambda: traffic_counts(traffic).get(key, {}).get("packets", 0) > 0)
        node_a.agent.kill(signal.SIGKILL)
        assert not node_a.agent.alive

        # With no agent at all, the program still runs and counts.
        while_dead = traffic_counts(traffic)[key]["packets"]
        wait_for(
            "counting without an agent", lambda: traffic_counts(traffic)[key]["packets"] > while_dead + 20
        )
        assert [p["id"] for p in cgroup_programs(pods[0].pod_cgroup)] == [program_id]

        passes_before = node_a.agent.log_path.read_text().count("initial reconcile done")
        node_a.agent.start()
        before_adoption = traffic_counts(traffic)[key]["packets"]
        wait_for(
            "restarted agent reconciled",
            lambda: node_a.agent.log_path.read_text().count("initial reconcile done") > passes_before,
            timeout=15,
        )
        wait_for(
            "counting after restart", lambda: traffic_counts(traffic)[key]["packets"] > before_adoption + 20
        )
    finally:
        sender.kill()
        sender.wait()

    # Exactly one attachment per pod, the same program: adopted, not recompiled or re-attached.
    for pod in pods:
        assert [p["id"] for p in cgroup_programs(pod.pod_cgroup)] == [program_id]
    assert traffic_counts(traffic)[key]["packets"] > before_adoption
    # The operator may have noticed the silence while the agent was down: the report heals.
    wait_for("READY True", lambda: kube.is_ready(namespace, PROGRAM), timeout=15)
    status = kube.program(namespace, PROGRAM)["status"]
    assert status["pods"] == {"selected": 2, "attached": 2, "failed": 0}
    assert kube.node_program(namespace, PROGRAM, node_a.name)["status"]["programId"] == program_id
    # The restarted agent adopted the pinned program instead of compiling it again.
    assert "compiling program" not in _lines_after_last_start(node_a.agent.log_path, f"{namespace}/{PROGRAM}")


def _lines_after_last_start(log: Path, program: str) -> str:
    text = log.read_text()
    since_restart = text[text.rindex('"msg": "agent starting"') :]
    return "\n".join(line for line in since_restart.splitlines() if program in line)


def test_a_silent_agent_is_reported_and_the_report_heals(kube: Kube, node_a, namespace: str):
    pod = node_a.create_pod(namespace, "web-1", {"app": "web"})
    kube.apply(namespace, EXAMPLE)
    wait_for("READY True", lambda: kube.is_ready(namespace, PROGRAM), timeout=10)
    node_a.agent.kill(signal.SIGKILL)
    try:
        wait_for(
            "AgentNotReporting",
            lambda: kube.condition(namespace, PROGRAM)["reason"] == "AgentNotReporting",
            timeout=20,
        )
        ready = kube.condition(namespace, PROGRAM)
        assert ready["status"] == "False"
        assert f"the agent on {node_a.name} has not reported since" in ready["message"]
        assert kube.condition(namespace, PROGRAM, "Stalled")["status"] == "False"  # it heals by itself
        assert cgroup_programs(pod.pod_cgroup)  # the data plane kept running meanwhile
    finally:
        node_a.agent.start()
    wait_for("READY True again", lambda: kube.is_ready(namespace, PROGRAM), timeout=20)
