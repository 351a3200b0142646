"""Faults: the operator killed mid-rollout, the API server and etcd restarted under load, deletions
while an agent is down, and a killed compile's half-written pins. Every expectation is read back
from the API server, the agent's own reports or the kernel (bpftool), never assumed of this host."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import yaml

from e2e.controlplane import ControlPlane
from e2e.harness import ManagedProcess, wait_for
from e2e.kube import Kube, bpftool, cgroup_id, cgroup_programs, traffic_counts
from e2e.podsim import spawn_in_cgroup
from e2e.tools import REPO_ROOT

pytestmark = pytest.mark.e2e

EXAMPLE = REPO_ROOT / "examples" / "pod-traffic-counter.yaml"
PROGRAM = "web-egress-traffic"
DOWN_SECONDS = 10
RECONVERGE_SECONDS = 10  # from the API server being back to a new pod attached and reported
SENDER = (
    "import socket, time\n"
    "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
    "while True:\n"
    "    s.sendto(b'x' * 64, ('127.0.0.1', 9)); time.sleep(0.005)\n"
)


def _manifest(name: str) -> dict[str, Any]:
    program = yaml.safe_load(EXAMPLE.read_text())
    program["metadata"] = {"name": name}
    return program


def _pods_summary(kube: Kube, namespace: str, program: str = PROGRAM) -> str:
    status = (kube.program(namespace, program) or {}).get("status") or {}
    return (status.get("summary") or {}).get("pods", "")


def _spec_entries(kube: Kube, namespace: str) -> dict[str, str]:
    """The nodes whose EbpfNodeState spec names the program: node -> version object name."""
    return {np["node"]: np["spec"]["version"] for np in kube.node_programs(namespace, PROGRAM) if np["spec"]}


def _version_uids(kube: Kube, namespace: str) -> set[str]:
    return {v["metadata"]["uid"] for v in kube.program_versions(namespace)}


def _links(program_id: int) -> dict[int, int]:
    """The kernel's cgroup links of a program: cgroup id -> link id."""
    return {
        link["cgroup_id"]: link["id"]
        for link in bpftool("link", "show") or []
        if link.get("prog_id") == program_id and "cgroup_id" in link
    }


def _link_exists(link_id: int) -> bool:
    return (
        subprocess.run(["bpftool", "link", "show", "id", str(link_id)], capture_output=True).returncode == 0
    )


def _map_exists(map_id: int) -> bool:
    return subprocess.run(["bpftool", "map", "show", "id", str(map_id)], capture_output=True).returncode == 0


def _log_size(process: ManagedProcess) -> int:
    return process.log_path.stat().st_size if process.log_path.exists() else 0


def _log_since(process: ManagedProcess, offset: int) -> str:
    with open(process.log_path, "rb") as log:
        log.seek(offset)
        return log.read().decode(errors="replace")


def _restarted_and_reconciled(agent: ManagedProcess) -> None:
    """Starts a stopped agent and waits for its first full pass."""
    offset = _log_size(agent)
    agent.start()
    wait_for(
        "restarted agent reconciled",
        lambda: "initial reconcile done" in _log_since(agent, offset),
        timeout=20,
    )


@contextmanager
def _sending(cgroup: Path) -> Iterator[None]:
    sender = spawn_in_cgroup([sys.executable, "-c", SENDER], cgroup)
    try:
        yield
    finally:
        sender.kill()
        sender.wait()


# -- 1. the operator killed mid-rollout ------------------------------------------------------------


@pytest.mark.parametrize("kill_at", ["apply", "first-node"])
def test_operator_killed_mid_rollout_converges_without_duplicates(
    kube: Kube, operator: ManagedProcess, node_a, node_b, namespace: str, kill_at: str
):
    pods = [node_a.create_pod(namespace, "web-a", {"app": "web"})]
    pods.append(node_b.create_pod(namespace, "web-b", {"app": "web"}))
    kube.apply(namespace, _manifest(PROGRAM))
    try:
        if kill_at == "first-node":
            wait_for(
                "the operator writing a first node's spec",
                lambda: len(_spec_entries(kube, namespace)) >= 1,
                timeout=15,
                interval=0.001,
            )
        operator.kill(signal.SIGKILL)
        assert not operator.alive
        at_kill = _version_uids(kube, namespace)
        assert kill_at == "apply" or len(at_kill) == 1
    finally:
        operator.stop()  # closes its log; a no-op on the process, which is gone
        operator.start()

    wait_for("READY True after the restart", lambda: kube.is_ready(namespace, PROGRAM), timeout=30)
    entries = _spec_entries(kube, namespace)
    assert sorted(entries) == [node_a.name, node_b.name]
    assert len(set(entries.values())) == 1  # one version for both nodes
    versions = _version_uids(kube, namespace)
    assert len(versions) == 1, f"{len(at_kill)} versions existed at the kill"
    assert at_kill <= versions  # adopted, not deleted and made again
    status = kube.program(namespace, PROGRAM)["status"]
    assert status["nodes"] == {"targeted": 2, "ready": 2, "failed": 0}
    assert status["pods"] == {"selected": 2, "attached": 2, "failed": 0}
    for node, pod in zip((node_a, node_b), pods, strict=True):
        program_id = kube.node_program(namespace, PROGRAM, node.name)["status"]["programId"]
        assert [p["id"] for p in cgroup_programs(pod.pod_cgroup)] == [program_id]


# -- 2. kube-apiserver, then etcd, restarted -------------------------------------------------------


def _restart_converges(
    control_plane: ControlPlane, component: str, kube: Kube, node_a, namespace: str, counter: Path, key: int
) -> None:
    """Stops one component for a few seconds, starts it again, and checks that a pod created then is
    attached and reported within RECONVERGE_SECONDS, while the traffic counter never stopped."""
    control_plane.stop_component(component, crash=True)
    try:
        before = traffic_counts(counter)[key]["packets"]
        # Longer than the operator's agent-silence window (the report has to heal, not just hold),
        # and long enough that a client backing off without a cap would still be asleep when it is back.
        time.sleep(DOWN_SECONDS)
        assert traffic_counts(counter)[key]["packets"] > before + 100, (
            f"the counter stalled with {component} down"
        )
    finally:
        control_plane.start_component(component)
    wait_for("the API server ready", control_plane.healthy, timeout=60, interval=0.1)
    back = time.monotonic()
    selected = len([p for p in node_a.pods if p.namespace == namespace])
    new_pod = node_a.create_pod(namespace, f"web-after-{component}", {"app": "web"})
    created = time.monotonic()
    wait_for(
        f"a pod created after the {component} restart attached",
        lambda: cgroup_programs(new_pod.pod_cgroup),
        timeout=RECONVERGE_SECONDS - (time.monotonic() - back),
    )
    attached = time.monotonic()
    expected = f"{selected + 1}/{selected + 1}"
    wait_for(
        f"status {expected} and Ready after the {component} restart",
        lambda: _pods_summary(kube, namespace) == expected and kube.is_ready(namespace, PROGRAM),
        timeout=max(RECONVERGE_SECONDS - (time.monotonic() - back), 0.1),
    )
    print(
        f"{component}: pod created {created - back:.2f}s after /readyz, attached {attached - back:.2f}s, "
        "converged "
        f"{time.monotonic() - back:.2f}s after /readyz",
        flush=True,
    )
    # Churn: a pod leaves, and the agent lets go of it.
    node_a.delete_pod(new_pod)
    expected = f"{selected}/{selected}"
    wait_for(f"status {expected} after a deletion", lambda: _pods_summary(kube, namespace) == expected)


@contextmanager
def _without_resync(operator: ManagedProcess) -> Iterator[None]:
    """The operator as in production, where only watch events are quick: with the tests' 1 s resync
    a watch that never came back would go unnoticed."""
    saved = operator.env["BPFLEET_RESYNC_SECONDS"]
    operator.stop()
    operator.env["BPFLEET_RESYNC_SECONDS"] = "600"
    operator.start()
    try:
        yield
    finally:
        operator.stop()
        operator.env["BPFLEET_RESYNC_SECONDS"] = saved
        operator.start()


def test_apiserver_and_etcd_restarts_leave_the_data_plane_and_converge(
    kube: Kube, control_plane: ControlPlane, operator: ManagedProcess, node_a, namespace: str
):
    with _without_resync(operator):
        _restarts_leave_the_data_plane_and_converge(kube, control_plane, node_a, namespace)


def _restarts_leave_the_data_plane_and_converge(
    kube: Kube, control_plane: ControlPlane, node_a, namespace: str
) -> None:
    pods = [node_a.create_pod(namespace, f"web-{i}", {"app": "web"}) for i in range(2)]
    kube.apply(namespace, _manifest(PROGRAM))
    wait_for("READY True", lambda: kube.is_ready(namespace, PROGRAM), timeout=15)
    status = kube.node_program(namespace, PROGRAM, node_a.name)["status"]
    program_id, counter = status["programId"], Path(status["pinPath"]) / "maps" / "traffic"
    links_before = _links(program_id)
    assert set(links_before) == {cgroup_id(p.pod_cgroup) for p in pods}
    key = cgroup_id(pods[0].pod_cgroup)

    with _sending(pods[0].container_cgroup):
        wait_for("traffic counted", lambda: traffic_counts(counter).get(key, {}).get("packets", 0) > 0)
        for component in ("kube-apiserver", "etcd"):
            _restart_converges(control_plane, component, kube, node_a, namespace, counter, key)
            # The pods that were there all along kept their links: not one was re-made.
            links_now = _links(program_id)
            assert {c: links_now.get(c) for c in links_before} == links_before
            assert kube.node_program(namespace, PROGRAM, node_a.name)["status"]["programId"] == program_id


# -- 3. deletions while the agent is down ----------------------------------------------------------


def test_deletions_while_the_agent_is_down_are_cleaned_up_at_start(kube: Kube, node_a, namespace: str):
    staying, leaving = (node_a.create_pod(namespace, f"web-{i}", {"app": "web"}) for i in range(2))
    kube.apply(namespace, _manifest(PROGRAM))
    kube.apply(namespace, _manifest("doomed"))
    wait_for(
        "both programs Ready",
        lambda: kube.is_ready(namespace, PROGRAM) and kube.is_ready(namespace, "doomed"),
        timeout=20,
    )
    kept_id = kube.node_program(namespace, PROGRAM, node_a.name)["status"]["programId"]
    doomed = kube.node_program(namespace, "doomed", node_a.name)["status"]
    doomed_links = _links(doomed["programId"])
    leaving_link = _links(kept_id)[cgroup_id(leaving.pod_cgroup)]
    leaving_pin = Path(kube.node_program(namespace, PROGRAM, node_a.name)["status"]["pinPath"]) / "links"
    assert (leaving_pin / leaving.uid).exists()

    node_a.agent.kill(signal.SIGKILL)
    try:
        kube.kubectl("delete", "ebpfprogram", "-n", namespace, "doomed", "--wait=false")
        node_a.delete_pod(leaving)
        # Nobody detaches meanwhile: out of the node's spec, still in its status, so the program's
        # deletion waits (for the grace of a silent agent at most).
        wait_for(
            "the entry removed from spec",
            lambda: [np["spec"] for np in kube.node_programs(namespace, "doomed")] == [None],
            timeout=10,
        )
        [held] = kube.node_programs(namespace, "doomed")
        assert held["status"] is not None and kube.program(namespace, "doomed") is not None
        assert [p["id"] for p in cgroup_programs(staying.pod_cgroup)].count(doomed["programId"]) == 1
    finally:
        _restarted_and_reconciled(node_a.agent)

    wait_for("the deleted program gone", lambda: kube.program(namespace, "doomed") is None, timeout=15)
    assert kube.node_programs(namespace, "doomed") == []
    assert not Path(doomed["pinPath"]).exists()
    assert not Path(doomed["pinPath"]).parent.exists()  # no empty program directory either
    assert doomed["programId"] not in [p["id"] for p in cgroup_programs(staying.pod_cgroup)]
    assert not any(_link_exists(link) for link in doomed_links.values())

    wait_for("the deleted pod's pin removed", lambda: not (leaving_pin / leaving.uid).exists(), timeout=10)
    assert not _link_exists(leaving_link)
    wait_for("status 1/1", lambda: _pods_summary(kube, namespace) == "1/1", timeout=10)
    assert kube.node_program(namespace, PROGRAM, node_a.name)["status"]["pods"]["selected"] == 1
    assert [p["id"] for p in cgroup_programs(staying.pod_cgroup)] == [kept_id]


# -- 4. a killed compile's leftovers ---------------------------------------------------------------


def _pinned_map(pin: Path) -> int:
    pin.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [
            "bpftool",
            "map",
            "create",
            str(pin),
            "type",
            "hash",
            "key",
            "4",
            "value",
            "4",
            "entries",
            "8",
            "name",
            "leftover",
        ],
        check=True,
    )
    return int(bpftool("map", "show", "pinned", str(pin))["id"])


def test_half_written_staging_directories_are_removed_at_start(kube: Kube, node_a, namespace: str):
    node_a.create_pod(namespace, "web-0", {"app": "web"})
    kube.apply(namespace, _manifest(PROGRAM))
    wait_for("READY True", lambda: kube.is_ready(namespace, PROGRAM), timeout=15)
    live = kube.node_program(namespace, PROGRAM, node_a.name)["status"]
    version_dir = Path(live["pinPath"])

    node_a.agent.kill(signal.SIGKILL)
    try:
        # What an agent killed while pinning leaves: a staging directory with some pins in it,
        # next to a live version, and one of a program that no longer exists anywhere.
        beside = version_dir.with_name("staging-" + "0" * 16)
        orphan = node_a.bpffs_root / namespace / "ghost" / ("staging-" + "1" * 16)
        leftover_maps = [_pinned_map(beside / "maps" / "m"), _pinned_map(orphan / "maps" / "m")]
        assert all(_map_exists(m) for m in leftover_maps)
    finally:
        _restarted_and_reconciled(node_a.agent)

    assert not beside.exists()
    assert not orphan.parent.exists()  # nor the empty program directory it sat in
    assert not any(_map_exists(m) for m in leftover_maps)
    # The live version was adopted, untouched.
    assert sorted(p.name for p in version_dir.parent.iterdir()) == [version_dir.name]
    wait_for("READY True", lambda: kube.is_ready(namespace, PROGRAM), timeout=10)
    assert kube.node_program(namespace, PROGRAM, node_a.name)["status"]["programId"] == live["programId"]
