"""A Node deleted while its agent is down: its EbpfNodeState goes with it (owned by its BpfleetNode,
which the Node owns), the data plane keeps running meanwhile (nobody is there to detach), and the
agent, when it starts, finds nothing addressed to it and removes every program, link and pin it had.
bpftool is the judge."""

from __future__ import annotations

import signal
from typing import Any

import pytest
import yaml

from bpfleet_api import names
from e2e import bpf_census
from e2e.harness import wait_for
from e2e.kube import Kube, cgroup_programs
from e2e.tools import REPO_ROOT

pytestmark = pytest.mark.e2e

PROGRAM = "web-egress-traffic"


def _manifest() -> dict[str, Any]:
    program = yaml.safe_load((REPO_ROOT / "examples" / "pod-traffic-counter.yaml").read_text())
    program["metadata"] = {"name": PROGRAM}
    return program


def _entries_on(kube: Kube, namespace: str, node: str) -> list[dict[str, Any]]:
    return [o for o in kube.node_programs(namespace, PROGRAM) if o["node"] == node]


def test_a_node_deleted_while_its_agent_is_down_is_cleaned_up_when_it_starts(
    kube: Kube, node_a, node_b, namespace: str
):
    node_a.create_pod(namespace, "web-a", {"app": "web"})
    pod = node_b.create_pod(namespace, "web-b", {"app": "web"})
    kube.apply(namespace, _manifest())
    wait_for("READY True on both nodes", lambda: kube.is_ready(namespace, PROGRAM), timeout=30)
    program_dir = node_b.bpffs_root / namespace / PROGRAM
    [version] = list(program_dir.iterdir())
    prog_id = bpf_census.pinned_id("prog", version / "prog")
    assert prog_id is not None
    assert [p["id"] for p in cgroup_programs(pod.pod_cgroup)] == [prog_id]
    [link] = bpf_census.links({prog_id})

    node_b.agent.kill(signal.SIGKILL)
    try:
        kube.core.delete_node(node_b.name)
        wait_for(
            "the deleted node's entries gone with its EbpfNodeState",
            lambda: not _entries_on(kube, namespace, node_b.name),
            timeout=30,
        )
        wait_for(
            "the program's status counting one node",
            lambda: (
                ((kube.program(namespace, PROGRAM) or {}).get("status") or {})
                .get("nodes", {})
                .get("targeted")
                == 1
            ),
            timeout=15,
        )
        # Nobody detached: with its agent down the node's data plane runs on.
        assert [p["id"] for p in cgroup_programs(pod.pod_cgroup)] == [prog_id]
        assert bpf_census.links({prog_id}) == [link]
    finally:
        node_b.agent.start()

    wait_for("the agent removing its pins", lambda: not bpf_census.pins(node_b.bpffs_root), timeout=30)
    wait_for("the program unloaded", lambda: not _loaded(prog_id), timeout=10)
    assert cgroup_programs(pod.pod_cgroup) == []
    assert bpf_census.links({prog_id}) == []
    assert not program_dir.exists()
    # The other node was left alone.
    assert kube.is_ready(namespace, PROGRAM)
    kube.kubectl("delete", f"{names.NODE_STATE_PLURAL}.{names.GROUP}", node_b.name, "--ignore-not-found")


def _loaded(prog_id: int) -> bool:
    return any(p["id"] == prog_id for p in bpf_census.programs())
