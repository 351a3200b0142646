"""Steady traffic from a pod while the cluster changes under it, and what was counted of it."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

from e2e.cluster_tests import pods
from e2e.kube import Kube

# argv: host, port, seconds, datagrams per second. Prints how many it sent.
STEADY_UDP = """
import socket, sys, time
host, port, seconds, rate = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
sent, start = 0, time.monotonic()
while time.monotonic() - start < seconds:
    s.sendto(b"x" * 64, (host, port))
    sent += 1
    time.sleep(1 / rate)
print(sent)
"""


class Sender:
    def __init__(self) -> None:
        self.sent: int | None = None
        self.error: BaseException | None = None
        self.done = threading.Event()


@contextmanager
def steady_udp(
    kube: Kube, namespace: str, pod: str, host: str, seconds: float, rate: int = 20
) -> Iterator[Sender]:
    """Sends from `pod` for `seconds` in the background; the block runs meanwhile. On exit waits for
    the sender, whose `sent` is then the number of datagrams the pod sent."""
    sender = Sender()

    def run() -> None:
        try:
            out = kube.kubectl(
                "exec",
                "-n",
                namespace,
                pod,
                "--",
                "python",
                "-c",
                STEADY_UDP,
                host,
                "9",
                str(seconds),
                str(rate),
            )
            sender.sent = int(out.strip())
        except BaseException as e:  # reported by the caller
            sender.error = e
        finally:
            sender.done.set()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        yield sender
    finally:
        thread.join(seconds + 60)
    if sender.error is not None:
        raise sender.error
    assert sender.sent is not None, "the sender did not finish"


def start_client(kube: Kube, namespace: str, name: str = "web-1") -> tuple[str, str]:
    """A selected client pod; returns its node and that node's address (where it sends to)."""
    pods.start(kube, namespace, [pods.client(name, {"app": "web"})])
    pod = kube.core.read_namespaced_pod(name, namespace)
    return str(pod.spec.node_name), str(pod.status.host_ip)
