"""Acceptance (issue 11): a node without kernel headers (its agent's modules dir is empty, as on a
managed node image) runs bytecode, reports C sources UnsupportedOnNode, and runs the builtin
pod-traffic-counter from the agent's own CO-RE object instead of compiling its C. This host has
headers, so BCC could compile here: the checks tell libbpf's load of that object from a BCC build."""

from __future__ import annotations

import hashlib
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from e2e.controlplane import ControlPlane
from e2e.harness import ManagedProcess
from e2e.kube import Kube, cgroup_id, cgroup_programs, traffic_counts
from e2e.tests.bytecode_nodes import (
    AGENT_BYTECODE_DIR,
    NODE_LABEL,
    SKB_EGRESS,
    Node,
    apply_ready,
    build_counter,
    bytecode_program,
    config_map,
    node_namespace,
    require_agent_bytecode,
    special_node,
    wait_failed,
)
from e2e.tests.programs import builtin, inline

BUILTIN = "pod-traffic-counter"
INLINE_COUNTER = """
int count_packets(struct __sk_buff *skb) { return 1; }
"""


@pytest.fixture(scope="module")
def counter_elf(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    require_agent_bytecode()
    return build_counter(tmp_path_factory.mktemp("elf"))


@pytest.fixture(scope="module")
def headerless_node(
    kube: Kube, control_plane: ControlPlane, operator: ManagedProcess, logs_dir: Path
) -> Iterator[Node]:
    with tempfile.TemporaryDirectory(prefix="bpfleet-e2e-no-modules-") as modules:
        with special_node(
            kube, control_plane, logs_dir, "noheaders", env={"BPFLEET_MODULES_DIR": modules}
        ) as node:
            yield node


@pytest.fixture
def ns(kube: Kube, headerless_node: Node) -> Iterator[str]:
    with node_namespace(kube, headerless_node) as name:
        yield name


def _on(node: Node, program: dict) -> dict:
    program["spec"]["nodeSelector"] = {"matchLabels": {NODE_LABEL: node.name}}
    return program


def source_files(prog_id: int) -> set[str]:
    """The source files named by the loaded program's line info: where its instructions came from."""
    dumped = subprocess.run(
        ["bpftool", "prog", "dump", "xlated", "id", str(prog_id), "linum"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return {part.split()[0] for part in dumped.split("[file:")[1:]}


def test_a_node_without_headers_runs_bytecode_and_refuses_c(
    kube: Kube, headerless_node: Node, ns: str, counter_elf: bytes
):
    web = headerless_node.create_pod(ns, "web-1", {"app": "web"})
    kube.apply(ns, config_map("counter", "prog.bpf.o", counter_elf))
    elf = bytecode_program(
        "elf",
        {"configMapRef": {"name": "counter", "key": "prog.bpf.o"}},
        headerless_node.name,
        sha256=hashlib.sha256(counter_elf).hexdigest(),
    )
    status = apply_ready(kube, headerless_node, ns, elf)
    assert [p["id"] for p in cgroup_programs(web.pod_cgroup)] == [status["programId"]]

    kube.apply(ns, _on(headerless_node, inline("c-source", INLINE_COUNTER, "count_packets", SKB_EGRESS)))
    message = wait_failed(kube, ns, "c-source", "UnsupportedOnNode")["message"]
    assert "header" in message, message
    # The bytecode program is the only one on the pod still.
    assert [p["id"] for p in cgroup_programs(web.pod_cgroup)] == [status["programId"]]


def test_the_builtin_runs_from_its_bytecode(kube: Kube, headerless_node: Node, ns: str):
    web = headerless_node.create_pod(ns, "web-1", {"app": "web"})
    db = headerless_node.create_pod(ns, "db-1", {"app": "db"})
    status = apply_ready(
        kube, headerless_node, ns, _on(headerless_node, builtin(BUILTIN, "count_packets", SKB_EGRESS))
    )

    [attached] = cgroup_programs(web.pod_cgroup)
    assert attached["id"] == status["programId"]
    assert cgroup_programs(db.pod_cgroup) == []
    # Built by clang from the builtin's own file (make bytecode), not BCC's rewrite of it
    # (/virtual/main.c): libbpf loaded the agent's object.
    files = source_files(status["programId"])
    assert any(f.endswith(f"bpf/programs/{BUILTIN}.c") for f in files), files
    assert not any(f.startswith("/virtual/") for f in files), files
    assert (AGENT_BYTECODE_DIR / f"{BUILTIN}.bpf.o").is_file()
    assert "builtins run from bytecode" in headerless_node.agent.log_path.read_text()

    traffic = Path(status["pinPath"]) / "maps" / "traffic"
    before = traffic_counts(traffic).get(cgroup_id(web.pod_cgroup), {"packets": 0, "bytes": 0})
    assert web.send_udp("127.0.0.1", 9, count=25, size=100).sent == 25
    assert db.send_udp("127.0.0.1", 9, count=25, size=100).sent == 25
    after = traffic_counts(traffic)
    counted = after[cgroup_id(web.pod_cgroup)]
    assert counted["packets"] - before["packets"] == 25
    assert counted["bytes"] - before["bytes"] >= 25 * 100
    assert cgroup_id(db.pod_cgroup) not in after
