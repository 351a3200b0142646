"""Each cgroup attach type through the full path, with an effect the program has, and its removal."""

from __future__ import annotations

import errno
import os
import socket
import sys
from collections.abc import Iterator

import pytest

from e2e.kube import Kube, bpftool, cgroup_id, cgroup_programs
from e2e.tests.programs import apply_ready, builtin, delete_leaves_no_trace

ERRNO_OF = (
    "import errno, sys\ntry:\n{body}\nexcept OSError as e:\n    print(e.errno); sys.exit(0)\nprint(0)\n"
)


def errno_in_pod(pod, body: str) -> int:
    """Runs `body` (indented Python) in the pod; returns the errno it failed with, or 0."""
    indented = "\n".join("    " + line for line in body.strip().splitlines())
    result = pod.run([sys.executable, "-c", ERRNO_OF.format(body=indented)], timeout=20)
    assert result.returncode == 0, result.stderr
    return int(result.stdout.strip())


def array_counter(pin_path: str, map_name: str) -> int:
    [entry] = bpftool("map", "dump", "pinned", f"{pin_path}/maps/{map_name}")
    return int(entry["formatted"]["value"])


@pytest.fixture
def pods(node_a, namespace: str):
    return node_a.create_pod(namespace, "web-1", {"app": "web"}), node_a.create_pod(
        namespace, "db-1", {"app": "db"}
    )


def test_cgroup_sock_refuses_raw_sockets(kube: Kube, node_a, namespace: str, pods):
    web, db = pods
    raw = "socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP).close()"
    body = f"import socket\n{raw}"
    assert errno_in_pod(web, body) == 0
    status = apply_ready(
        kube,
        node_a,
        namespace,
        builtin("raw-socket-deny", "deny_raw_sockets", {"type": "CgroupSock", "hook": "SockCreate"}),
    )
    assert errno_in_pod(web, body) == errno.EPERM
    assert errno_in_pod(web, "import socket\nsocket.socket(socket.AF_INET, socket.SOCK_DGRAM).close()") == 0
    assert errno_in_pod(db, body) == 0
    assert array_counter(status["pinPath"], "denied") == 1
    delete_leaves_no_trace(kube, node_a, namespace, "raw-socket-deny", [web, db])
    assert errno_in_pod(web, body) == 0


SWAPPINESS = "/proc/sys/vm/swappiness"
# Writes back the value it read: the host's setting never changes, allowed or not.
WRITE_SAME_VALUE = (
    f"value = open('{SWAPPINESS}').read()\nwith open('{SWAPPINESS}', 'w') as f:\n    f.write(value)"
)


def test_cgroup_sysctl_makes_sysctls_read_only(kube: Kube, node_a, namespace: str, pods):
    web, db = pods
    assert errno_in_pod(web, WRITE_SAME_VALUE) == 0
    status = apply_ready(
        kube, node_a, namespace, builtin("sysctl-write-deny", "deny_sysctl_writes", {"type": "CgroupSysctl"})
    )
    assert errno_in_pod(web, WRITE_SAME_VALUE) == errno.EPERM
    assert errno_in_pod(web, f"open('{SWAPPINESS}').read()") == 0
    assert errno_in_pod(db, WRITE_SAME_VALUE) == 0
    assert array_counter(status["pinPath"], "denied") >= 1
    delete_leaves_no_trace(kube, node_a, namespace, "sysctl-write-deny", [web, db])
    assert errno_in_pod(web, WRITE_SAME_VALUE) == 0


def test_cgroup_device_refuses_one_device(kube: Kube, node_a, namespace: str, pods):
    web, db = pods
    zero = os.stat("/dev/zero").st_rdev
    major, minor = os.major(zero), os.minor(zero)
    read_zero = "open('/dev/zero', 'rb').read(1)"
    program = builtin(
        "device-deny", "deny_device", {"type": "CgroupDevice"}, parameters={"MAJOR": major, "MINOR": minor}
    )
    status = apply_ready(kube, node_a, namespace, program)
    assert errno_in_pod(web, read_zero) == errno.EPERM
    assert errno_in_pod(web, "open('/dev/null', 'rb').read(1)") == 0
    assert errno_in_pod(db, read_zero) == 0
    assert array_counter(status["pinPath"], "denied") >= 1
    delete_leaves_no_trace(kube, node_a, namespace, "device-deny", [web, db])
    assert errno_in_pod(web, read_zero) == 0


@pytest.fixture
def listener() -> Iterator[int]:
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    try:
        yield server.getsockname()[1]
    finally:
        server.close()


def test_cgroup_sock_addr_audits_connections_per_pod(kube: Kube, node_a, namespace: str, pods, listener: int):
    web, db = pods
    status = apply_ready(
        kube,
        node_a,
        namespace,
        builtin("connection-audit", "audit_connect4", {"type": "CgroupSockAddr", "hook": "Connect4"}),
    )
    for _ in range(3):
        assert web.connect_tcp("127.0.0.1", listener) == 0
    assert db.connect_tcp("127.0.0.1", listener) == 0
    entries = [
        e["formatted"] for e in bpftool("map", "dump", "pinned", f"{status['pinPath']}/maps/connections")
    ]
    loopback = int.from_bytes(socket.inet_aton("127.0.0.1"), "little")  # network order, read as a u32
    seen = {(e["key"]["pod"], e["key"]["address"], e["key"]["port"]): e["value"] for e in entries}
    assert seen == {(cgroup_id(web.pod_cgroup), loopback, listener): 3}
    delete_leaves_no_trace(kube, node_a, namespace, "connection-audit", [web, db])


def test_cgroup_skb_counts_dns_queries_per_pod(kube: Kube, node_a, namespace: str, pods):
    web, db = pods
    status = apply_ready(
        kube,
        node_a,
        namespace,
        builtin("dns-query-counter", "count_dns_queries", {"type": "CgroupSkb", "direction": "Egress"}),
    )
    assert web.send_udp("127.0.0.1", 53, count=4).sent == 4
    assert web.send_udp("127.0.0.1", 5353, count=4).sent == 4  # not DNS
    assert db.send_udp("127.0.0.1", 53, count=4).sent == 4  # not selected
    entries = bpftool("map", "dump", "pinned", f"{status['pinPath']}/maps/queries")
    assert {int(e["formatted"]["key"]): int(e["formatted"]["value"]) for e in entries} == {
        cgroup_id(web.pod_cgroup): 4
    }
    assert [p["attach_type"] for p in cgroup_programs(web.pod_cgroup)] == ["cgroup_inet_egress"]
    delete_leaves_no_trace(kube, node_a, namespace, "dns-query-counter", [web, db])
