"""Real pods for the cluster suite: a TCP server and clients, driven with `kubectl exec`."""

from __future__ import annotations

import os
from typing import Any

from e2e.kube import Kube

# Python in both: clients report connect()'s errno itself, and the server needs no other image. A
# cluster without a registry (the real node of e2e/realnode) names one of its own that has python.
IMAGE = os.environ.get("BPFLEET_CLUSTER_APP_IMAGE", "python:3.12-slim")
SERVER = "server"
# The server listens on both; the port-deny test refuses the first only.
SERVER_PORTS = (8080, 8081)

# connect() to argv[1]:argv[2]; prints its errno (0: connected, 1: EPERM, refused by a program).
CONNECT = """
import socket, sys
s = socket.socket()
s.settimeout(5)
print(s.connect_ex((sys.argv[1], int(sys.argv[2]))))
"""
# argv[3] UDP datagrams of argv[4] bytes to argv[1]:argv[2]; nobody need listen.
SEND_UDP = """
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
for _ in range(int(sys.argv[3])):
    s.sendto(b"x" * int(sys.argv[4]), (sys.argv[1], int(sys.argv[2])))
"""


def _pod(name: str, labels: dict[str, str], containers: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": labels},
        # sleep ignores SIGTERM: nothing to wait for when the namespace goes.
        "spec": {"terminationGracePeriodSeconds": 0, "containers": containers},
    }


def client(name: str, labels: dict[str, str]) -> dict[str, Any]:
    return _pod(name, labels, [{"name": "client", "image": IMAGE, "command": ["sleep", "infinity"]}])


def server() -> dict[str, Any]:
    """One HTTP server per port, each Ready once it accepts connections."""
    return _pod(
        SERVER,
        {"app": "server"},
        [
            {
                "name": f"http-{port}",
                "image": IMAGE,
                "command": ["python", "-m", "http.server", str(port), "--bind", "0.0.0.0"],
                "readinessProbe": {"tcpSocket": {"port": port}, "periodSeconds": 1},
            }
            for port in SERVER_PORTS
        ],
    )


def start(kube: Kube, namespace: str, pods: list[dict[str, Any]]) -> None:
    """Creates the pods and waits until every one is Ready (the first run pulls the image)."""
    for pod in pods:
        kube.apply(namespace, pod)
    kube.kubectl("wait", "--for=condition=Ready", "pod", "--all", "-n", namespace, "--timeout=300s")


def ip(kube: Kube, namespace: str, pod: str) -> str:
    return str(kube.core.read_namespaced_pod(pod, namespace).status.pod_ip)


def node(kube: Kube, namespace: str, pod: str) -> str:
    return str(kube.core.read_namespaced_pod(pod, namespace).spec.node_name)


def connect(kube: Kube, namespace: str, pod: str, host: str, port: int) -> int:
    """The errno of a TCP connect() from the pod: the call runs in the pod's cgroup, as its own do."""
    return int(kube.kubectl("exec", "-n", namespace, pod, "--", "python", "-c", CONNECT, host, str(port)))


def send_udp(kube: Kube, namespace: str, pod: str, host: str, port: int, count: int, size: int) -> None:
    kube.kubectl(
        "exec", "-n", namespace, pod, "--", "python", "-c", SEND_UDP, host, str(port), str(count), str(size)
    )
