"""Acceptance (issue 8, zero gap): pods started in kubelet's order, whose first process sends its
first datagram and tries its first connect the instant it exists, on a node running many programs:
no first packet goes uncounted by the traffic counter, and no connect to the denied port succeeds.

The runtime's container-start hook is used (node_agent.hook, as an OCI createRuntime hook would
be): inotify alone attaches within milliseconds of the cgroup, but a process started in the same
instant can be faster; the hook holds the start until the agent says every program is attached.
Scale: BPFLEET_ZERO_GAP_PODS (200) and BPFLEET_ZERO_GAP_PROGRAMS (50, at least 2).
"""

from __future__ import annotations

import errno
import os
import socket
import statistics
from collections.abc import Iterator
from pathlib import Path

import pytest

from e2e.harness import hook_socket, log, wait_for
from e2e.kube import Kube, cgroup_id, traffic_counts
from e2e.kubelet_order import KubeletOrder
from e2e.tests.programs import ebpf_program

PODS = int(os.environ.get("BPFLEET_ZERO_GAP_PODS", "200"))
PROGRAMS = max(2, int(os.environ.get("BPFLEET_ZERO_GAP_PROGRAMS", "50")))
SELECTOR = {"matchLabels": {"app": "zg"}}
UDP_TARGET = ("127.0.0.1", 9)  # discard: nothing needs to listen for a datagram to leave


def _program(name: str, builtin: str, function: str, attach: dict, **spec: object) -> dict:
    body = {"source": {"builtin": builtin}, "function": function, "attach": attach, "podSelector": SELECTOR}
    return ebpf_program(name, {**body, **spec})


def programs(denied: int) -> list[dict]:
    """The counter, the port-deny, and fillers of both kinds up to PROGRAMS."""
    counter = _program(
        "counter", "pod-traffic-counter", "count_packets", {"type": "CgroupSkb", "direction": "Egress"}
    )
    deny_attach = {"type": "CgroupSockAddr", "hook": "Connect4"}
    deny = _program("deny", "egress-port-deny", "deny_connect4", deny_attach, parameters={"PORT": denied})
    fillers = []
    for i in range(PROGRAMS - 2):
        if i % 2:
            attach = {"type": "CgroupSkb", "direction": "Ingress"}
            fillers.append(_program(f"filler-{i}", "pod-traffic-counter", "count_packets", attach))
        else:
            port = {"PORT": 30000 + i}
            fillers.append(
                _program(f"filler-{i}", "egress-port-deny", "deny_connect4", deny_attach, parameters=port)
            )
    return [counter, deny, *fillers]


@pytest.fixture
def denied_listener() -> Iterator[int]:
    """A listener on the denied port: a connect that is not refused would succeed."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(PODS + 16)
        yield listener.getsockname()[1]


# Compiles of every program, then pods one after the other: more than the suite's default.
@pytest.mark.timeout(120 + 6 * PROGRAMS + 2 * PODS)
def test_no_first_packet_or_connect_escapes(
    kube: Kube, node_a, namespace: str, logs_dir: Path, denied_listener
):
    manifests = programs(denied_listener)
    for manifest in manifests:
        kube.apply(namespace, manifest)
    names = [m["metadata"]["name"] for m in manifests]
    wait_for(
        f"{len(names)} programs Ready",
        lambda: all(kube.is_ready(namespace, n) for n in names),
        timeout=60 + 6 * PROGRAMS,
    )
    order = KubeletOrder(node_a.sim, hook_socket(logs_dir, node_a.name))
    started, hook_waits = [], []
    for i in range(PODS):
        pod = order.create_pending(namespace, f"zg-{i}", {"app": "zg"})
        node_a.pods.append(pod)  # the namespace fixture removes it, processes and cgroups included
        moves, timeline = order.start(pod, UDP_TARGET, ("127.0.0.1", denied_listener))
        started.append((pod, moves))
        hook_waits.append(timeline.hook_done - timeline.container_cgroup)

    status = kube.node_program(namespace, "counter", node_a.name)["status"]
    counts = traffic_counts(Path(status["pinPath"]) / "maps" / "traffic")
    uncounted = [p.name for p, _ in started if counts.get(cgroup_id(p.pod_cgroup), {}).get("packets") != 1]
    connected = [p.name for p, moves in started if moves.connect != errno.EPERM]
    unsent = [p.name for p, moves in started if moves.sent != len(b"first")]
    log(
        "zero gap",
        pods=PODS,
        programs=PROGRAMS,
        hook_p50_ms=round(statistics.median(hook_waits) * 1000, 1),
        hook_max_ms=round(max(hook_waits) * 1000, 1),
    )
    assert unsent == []
    assert uncounted == [], f"{len(uncounted)} pods' first datagram went uncounted"
    assert connected == [], f"{len(connected)} pods' first connect to the denied port was not refused"
