"""Acceptance: examples/egress-port-deny.yaml refuses connections to PORT, and deleting it undoes it all."""

from __future__ import annotations

import errno
import socket
from collections.abc import Iterator

import pytest
import yaml

from e2e.harness import wait_for
from e2e.kube import Kube, cgroup_programs
from e2e.tools import REPO_ROOT

EXAMPLE = REPO_ROOT / "examples" / "egress-port-deny.yaml"
PROGRAM = "web-no-redis"


@pytest.fixture
def listeners() -> Iterator[tuple[int, int]]:
    """Two TCP listeners on loopback: the denied port (from the example) and another one."""
    denied = yaml.safe_load(EXAMPLE.read_text())["spec"]["parameters"]["PORT"]
    sockets = []
    for port in (denied, 0):
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", port))
        s.listen(64)
        sockets.append(s)
    try:
        yield denied, sockets[1].getsockname()[1]
    finally:
        for s in sockets:
            s.close()


def test_denies_port_then_delete_removes_every_trace(kube: Kube, node_a, namespace: str, listeners):
    denied, other = listeners
    web = node_a.create_pod(namespace, "web-1", {"app": "web"})
    assert web.connect_tcp("127.0.0.1", denied) == 0

    kube.apply(namespace, EXAMPLE)
    wait_for("READY True", lambda: kube.is_ready(namespace, PROGRAM), timeout=10)

    assert web.connect_tcp("127.0.0.1", denied) == errno.EPERM
    assert web.connect_tcp("127.0.0.1", other) == 0
    program_id = kube.node_program(namespace, PROGRAM, node_a.name)["status"]["programId"]
    assert [p["id"] for p in cgroup_programs(web.pod_cgroup)] == [program_id]

    kube.kubectl("delete", "-n", namespace, "-f", str(EXAMPLE), "--wait=true", "--timeout=20s")

    assert kube.program(namespace, PROGRAM) is None
    assert kube.node_programs(namespace, PROGRAM) == []
    assert web.connect_tcp("127.0.0.1", denied) == 0
    assert cgroup_programs(web.pod_cgroup) == []
    # No pins left: the program's directories went with it, up to the namespace's.
    assert not (node_a.bpffs_root / namespace).exists()
