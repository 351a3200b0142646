"""Acceptance: a new version of a program takes over in place, with its maps, through the full path.

- A counter updated under known traffic counts every packet once, and goes on from its old values.
- An XDP program is updated on a pod's interface: the same link, the counts carried on.
- The agent killed (SIGKILL) at random points of an update, 20 times: each time the restarted agent
  converges with exactly one version attached, judged from the kernel (bpftool on the pod cgroups,
  link info of the pins), and the counter map stays the same map throughout.
"""

from __future__ import annotations

import random
import signal
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from e2e.bpf_census import compile_cgroups
from e2e.harness import wait_for
from e2e.kube import Kube, bpftool, cgroup_id, cgroup_programs, traffic_counts
from e2e.sim_pod import UdpSender
from e2e.tests.programs import SKB_EGRESS, apply_ready, inline
from e2e.tools import REPO_ROOT
from node_agent.kernel import syscalls

COUNTER = (REPO_ROOT / "bpf" / "programs" / "pod-traffic-counter.c").read_text()
XDP = (REPO_ROOT / "bpf" / "programs" / "xdp-protocol-counter.c").read_text()
SIZE, IPV4_UDP_HEADERS = 64, 20 + 8
TRIES = 20


@pytest.fixture
def sink() -> Iterator[int]:
    """A bound UDP port nobody reads: datagrams to it raise no ICMP errors."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as receiver:
        receiver.bind(("127.0.0.1", 0))
        yield receiver.getsockname()[1]


def counter(version: int) -> dict[str, Any]:
    return inline("counter", COUNTER + f"\n/* version {version} */\n", "count_packets", SKB_EGRESS)


def version_dirs(node: Any, namespace: str, name: str) -> list[Path]:
    return sorted((node.bpffs_root / namespace / name).glob("*"))


def map_id(pin: Path) -> int:
    with syscalls.closing_fd(syscalls.obj_get(str(pin))) as fd:
        return syscalls.map_info(fd).id


def serving(kube: Kube, node: Any, namespace: str, name: str, old_id: int) -> dict[str, Any] | None:
    """The program's status entry on the node once it serves a version other than program `old_id`, Ready."""
    status = kube.node_program(namespace, name, node.name).get("status") or {}
    if status.get("programId") in (None, old_id) or not kube.is_ready(namespace, name):
        return None
    return status


def test_a_counter_updated_under_traffic_counts_each_packet_once_and_goes_on_from_its_values(
    kube: Kube, node_a, namespace: str, sink: int
):
    pod = node_a.create_pod(namespace, "web-1", {"app": "web"})
    one = apply_ready(kube, node_a, namespace, counter(1))
    key = cgroup_id(pod.pod_cgroup)
    sender = UdpSender(pod.container_cgroup, sink)
    try:
        traffic = Path(one["pinPath"]) / "maps" / "traffic"
        wait_for("counting on v1", lambda: traffic_counts(traffic).get(key, {}).get("packets", 0) > 100)
        kube.apply(namespace, counter(2))
        two = wait_for_value(lambda: serving(kube, node_a, namespace, "counter", one["programId"]), "v2")
        traffic = Path(two["pinPath"]) / "maps" / "traffic"
        at_swap = traffic_counts(traffic)[key]["packets"]
        wait_for("counting on v2", lambda: traffic_counts(traffic)[key]["packets"] > at_swap + 100)
        assert sender.running(), "the traffic must run across the whole update"
        sent = sender.stop()
    finally:
        sender.kill()
    # One map from v1 to v2: the packets before, during and after the swap, each counted once.
    assert traffic_counts(traffic)[key] == {"packets": sent, "bytes": sent * (SIZE + IPV4_UDP_HEADERS)}
    status = kube.node_program(namespace, "counter", node_a.name)["status"]
    assert (status.get("mapsKept"), status.get("mapsReset")) == (["traffic"], None)  # none reset
    assert [p["id"] for p in cgroup_programs(pod.pod_cgroup)] == [two["programId"]]
    assert version_dirs(node_a, namespace, "counter") == [Path(two["pinPath"])]


def wait_for_value(get: Any, what: str, timeout: float = 30.0) -> Any:
    found: list[Any] = []

    def ready() -> bool:
        value = get()
        if value:
            found.append(value)
        return bool(value)

    wait_for(what, ready, timeout=timeout)
    return found[-1]


def xdp_counts(pin_path: str) -> int:
    """UDP packets counted by the XDP counter."""
    for entry in bpftool("map", "dump", "pinned", f"{pin_path}/maps/packets"):
        if int(entry["formatted"]["key"]) == socket.IPPROTO_UDP:
            return int(entry["formatted"]["value"])
    return 0


def send_to_pod(pod: Any, count: int) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender:
        for _ in range(count):
            sender.sendto(b"x" * 32, (pod.network.pod_ip, 9))
            time.sleep(0.002)


def xdp_links(program_id: int) -> list[dict[str, Any]]:
    return [link for link in bpftool("link", "show") or [] if link["prog_id"] == program_id]


def test_an_xdp_program_is_updated_in_place_on_the_pods_interface(kube: Kube, node_a, namespace: str):
    pod = node_a.create_pod(namespace, "web-1", {"app": "web"}, network=True)
    attach = {"type": "Xdp", "mode": "Generic"}
    one = apply_ready(kube, node_a, namespace, inline("xdp", XDP, "count_protocols", attach))
    [link] = xdp_links(one["programId"])
    send_to_pod(pod, 12)
    wait_for("v1 counts", lambda: xdp_counts(one["pinPath"]) >= 12)
    before = xdp_counts(one["pinPath"])

    kube.apply(namespace, inline("xdp", XDP + "\n/* v2 */\n", "count_protocols", attach))
    two = wait_for_value(lambda: serving(kube, node_a, namespace, "xdp", one["programId"]), "v2 serving")
    # No EBUSY and no detach: the very link now runs v2, alone on the interface.
    assert xdp_links(one["programId"]) == []
    [moved] = xdp_links(two["programId"])
    assert moved["id"] == link["id"] and moved["type"] == "xdp"
    assert xdp_counts(two["pinPath"]) >= before  # v1's counts, carried over
    send_to_pod(pod, 12)
    wait_for("v2 counts on from v1's", lambda: xdp_counts(two["pinPath"]) >= before + 12)
    assert version_dirs(node_a, namespace, "xdp") == [Path(two["pinPath"])]


def restart_and_stop(agent: Any) -> None:
    """Stops the agent once a fresh start of it is done: whatever one killed mid-start left, the
    next start takes over."""
    agent.stop()
    offset = agent.log_path.stat().st_size
    agent.start()

    def started() -> bool:
        with open(agent.log_path, "rb") as f:
            f.seek(offset)
            return b"initial reconcile done" in f.read()

    wait_for("the agent's start", started, timeout=60)
    agent.stop()


@pytest.fixture
def no_leftover_compile_cgroups(node_a) -> Iterator[None]:
    """Each agent the test kills leaves its workers' cgroups behind: the node's next agent removes
    them at its start, and an agent stopped removes its own."""
    before = compile_cgroups()
    yield
    restart_and_stop(node_a.agent)
    try:
        left = compile_cgroups() - before
        assert not left, f"compile cgroups left: {sorted(str(c) for c in left)}"
    finally:
        node_a.agent.start()


def converged(
    kube: Kube, node: Any, namespace: str, pods: list[Any], generation: int
) -> dict[str, Any] | None:
    """The one version on every pod, or None while the kernel or the pins say otherwise."""
    program = kube.program(namespace, "counter")
    if (
        program is None
        or program["metadata"]["generation"] != generation
        or not kube.is_ready(namespace, "counter")
    ):
        return None
    dirs = version_dirs(node, namespace, "counter")
    if len(dirs) != 1:
        return None  # a staging directory or a second version still there
    [version] = dirs
    with syscalls.closing_fd(syscalls.obj_get(str(version / "prog"))) as fd:
        prog_id = syscalls.prog_info(fd).id
    for pod in pods:
        if [p["id"] for p in cgroup_programs(pod.pod_cgroup)] != [prog_id]:
            return None
        with syscalls.closing_fd(syscalls.obj_get(str(version / "links" / pod.uid))) as fd:
            if syscalls.link_info(fd).prog_id != prog_id:
                return None
    status = kube.node_program(namespace, "counter", node.name).get("status") or {}
    if status.get("programId") != prog_id or status.get("pinPath") != str(version):
        return None
    return {"prog_id": prog_id, "version": version}


# Where a try kills the agent: at a random moment of the update (which takes about a compile), or
# a few milliseconds after the agent logs a step: the compile starting, or the new version published
# (its links move right after it, in the same pass).
TRIGGERS = ("", "compiling program", "maps carried over from the previous version")


def kill_point(log: Path, offset: int, trigger: str, rng: random.Random) -> None:
    if not trigger:
        time.sleep(rng.uniform(0.0, 1.5))
        return

    def logged() -> bool:
        with open(log, "rb") as f:
            f.seek(offset)
            return trigger.encode() in f.read()

    wait_for(f"the agent to log {trigger!r}", logged, timeout=30, interval=0.002)
    time.sleep(rng.uniform(0.0, 0.01))


def test_sigkill_at_random_points_of_updates_converges_each_time_to_exactly_one_version(
    kube: Kube, node_a, namespace: str, no_leftover_compile_cgroups: None
):
    pods = [node_a.create_pod(namespace, f"web-{i}", {"app": "web"}) for i in range(2)]
    apply_ready(kube, node_a, namespace, counter(0))
    [first] = version_dirs(node_a, namespace, "counter")
    traffic_map = map_id(first / "maps" / "traffic")
    rng = random.Random(8)
    seen: list[int] = []
    try:
        for attempt in range(1, TRIES + 1):
            offset = node_a.agent.log_path.stat().st_size
            kube.apply(namespace, counter(attempt))
            kill_point(node_a.agent.log_path, offset, TRIGGERS[attempt % len(TRIGGERS)], rng)
            node_a.agent.kill(signal.SIGKILL)
            assert not node_a.agent.alive
            node_a.agent.start()
            generation = kube.program(namespace, "counter")["metadata"]["generation"]
            done = wait_for_value(
                lambda g=generation: converged(kube, node_a, namespace, pods, g), f"try {attempt} converged"
            )
            seen.append(done["prog_id"])
            # One map all along: no kill made a version start from empty counters.
            assert map_id(done["version"] / "maps" / "traffic") == traffic_map, f"try {attempt}"
    finally:
        if not node_a.agent.alive:
            node_a.agent.start()
    assert len(set(seen)) == TRIES  # each try ended on its own new version
