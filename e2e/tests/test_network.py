"""Tc and Xdp through the full path, on pods with their own network namespace and veth pair."""

from __future__ import annotations

import socket
import subprocess
import sys
import time

import pytest

from e2e.kube import Kube, bpftool
from e2e.podsim import spawn_in_cgroup
from e2e.tests.programs import apply_ready, builtin, delete_leaves_no_trace, refused_for_tenants

DROPPED_PORT, OPEN_PORT = 7777, 7778
RECEIVER = (
    "import socket, sys, time\n"
    "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
    "s.bind(('0.0.0.0', int(sys.argv[1]))); s.settimeout(0.2)\n"
    "print('ready', flush=True)\n"
    "got, end = 0, time.monotonic() + float(sys.argv[2])\n"
    "while time.monotonic() < end:\n"
    "    try:\n"
    "        s.recv(2048); got += 1\n"
    "    except socket.timeout:\n"
    "        pass\n"
    "print(got)\n"
)


def delivered(pod, port: int, count: int = 10) -> int:
    """Sends `count` datagrams from the host to the pod's port; returns how many the pod received."""
    receiver = spawn_in_cgroup(
        pod.network.exec_argv([sys.executable, "-c", RECEIVER, str(port), "1.5"]),
        pod.container_cgroup,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert receiver.stdout is not None and receiver.stdout.readline().strip() == "ready"
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender:
            for _ in range(count):
                sender.sendto(b"x" * 32, (pod.network.pod_ip, port))
                time.sleep(0.005)
        out, _ = receiver.communicate(timeout=10)
        return int(out.strip())
    finally:
        receiver.kill()


def links_of(program_id: int) -> list[dict]:
    return [link for link in bpftool("link", "show") or [] if link["prog_id"] == program_id]


@pytest.fixture
def web(node_a, namespace: str):
    return node_a.create_pod(namespace, "web-1", {"app": "web"}, network=True)


def test_tc_drops_one_port_on_the_pods_end_of_the_veth(kube: Kube, node_a, namespace: str, web):
    assert delivered(web, DROPPED_PORT) == 10
    attach = {"type": "Tc", "direction": "Ingress", "side": "Pod"}
    program = builtin("tc-port-drop", "drop_port", attach, parameters={"PORT": DROPPED_PORT})
    status = apply_ready(kube, node_a, namespace, program)

    [link] = links_of(status["programId"])
    assert link["type"] in ("tcx", 11), link  # older bpftool releases print the number
    assert delivered(web, DROPPED_PORT) == 0
    assert delivered(web, OPEN_PORT) == 10
    [entry] = bpftool("map", "dump", "pinned", f"{status['pinPath']}/maps/dropped")
    assert int(entry["formatted"]["value"]) == 10

    delete_leaves_no_trace(kube, node_a, namespace, "tc-port-drop", [web])
    assert links_of(status["programId"]) == []
    assert delivered(web, DROPPED_PORT) == 10


def test_the_host_end_of_a_pods_veth_is_for_cluster_programs(kube: Kube, node_a, namespace: str, web):
    # The host side sees the node's side of the pod network: a ClusterEbpfProgram's (see
    # test_cluster_programs), never a tenant's.
    attach = {"type": "Tc", "direction": "Egress", "side": "Host"}
    program = builtin("tc-port-drop", "drop_port", attach, parameters={"PORT": DROPPED_PORT})
    assert "side Host" in refused_for_tenants(kube, namespace, program)
    assert not (node_a.bpffs_root / namespace).exists()
    assert delivered(web, DROPPED_PORT) == 10


def test_xdp_counts_packets_by_protocol(kube: Kube, node_a, namespace: str, web):
    attach = {"type": "Xdp", "mode": "Generic"}
    status = apply_ready(kube, node_a, namespace, builtin("xdp-protocol-counter", "count_protocols", attach))
    [link] = links_of(status["programId"])
    assert link["type"] == "xdp"
    assert delivered(web, OPEN_PORT, count=12) == 12
    counts = {
        int(e["formatted"]["key"]): int(e["formatted"]["value"])
        for e in bpftool("map", "dump", "pinned", f"{status['pinPath']}/maps/packets")
    }
    assert counts[socket.IPPROTO_UDP] >= 12
    delete_leaves_no_trace(kube, node_a, namespace, "xdp-protocol-counter", [web])
    assert links_of(status["programId"]) == []
