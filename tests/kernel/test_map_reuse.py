"""A new version of a program takes over its previous version's maps, on the real kernel.

A map whose layout is unchanged (name, type, sizes, max_entries, flags, and BCC's key and value
types) is the very map of the previous version: counters carry on across the update, packets sent
while the link moves are counted once. A map whose layout changed starts empty; the agent's own maps
and other programs' maps are never taken over; the map memory cap still counts what is carried.
"""

from __future__ import annotations

import socket
import sys
from pathlib import Path

import pytest

from e2e.sim_pod import UdpSender
from node_agent import errors
from node_agent.kernel import map_reuse, syscalls
from node_agent.kernel.attach_types import kernel_attach
from node_agent.kernel.backend import LoadedProgram, ProgramBuild, ProgramRef
from node_agent.kernel.bpffs import BpffsBackend
from tests.kernel.support import COUNTER, EGRESS, INCLUDE_DIR, wait_until

pytestmark = pytest.mark.kernel

V1, V2 = (
    ProgramRef("team-a", "counter", "00000000000000a1"),
    ProgramRef("team-a", "counter", "00000000000000a2"),
)
IPV4_UDP_HEADERS = 20 + 8
SIZE = 64


def counts(loaded: LoadedProgram, pod_id: int) -> tuple[int, int]:
    """(packets, bytes) of one pod in the version's `traffic` map, read through its pin."""
    with syscalls.closing_fd(syscalls.obj_get(f"{loaded.pin_dir}/maps/traffic")) as fd:
        for key, value in syscalls.map_items(fd, 8, 16):
            if int.from_bytes(key, sys.byteorder) == pod_id:
                return int.from_bytes(value[:8], sys.byteorder), int.from_bytes(value[8:], sys.byteorder)
    return 0, 0


def map_id(loaded: LoadedProgram, name: str) -> int:
    with syscalls.closing_fd(syscalls.obj_get(f"{loaded.pin_dir}/maps/{name}")) as fd:
        return syscalls.map_info(fd).id


@pytest.fixture
def sink():
    """A bound UDP port nobody reads: datagrams to it raise no ICMP, and may be dropped there."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as receiver:
        receiver.bind(("127.0.0.1", 0))
        yield receiver.getsockname()[1]


def test_counters_continue_across_an_update_under_traffic_with_no_packet_lost_or_doubled(
    backend: BpffsBackend, pod_cgroups, sink: int
):
    pod = pod_cgroups()
    one = backend.load(V1, COUNTER)
    backend.attach(V1, pod.uid, pod.pod, EGRESS)
    sender = UdpSender(pod.container, sink, batch=20, pause=0.002)
    try:
        wait_until(lambda: counts(one, pod.cgroup_id)[0] > 200, "counting on v1")
        # Compiled while v1 counts into the map it takes over; then the link moves, still under traffic.
        two = backend.load(V2, ProgramBuild(COUNTER.source + "\n/* v2 */\n", COUNTER.function, EGRESS), V1)
        assert (two.kept_maps, two.reset_maps) == (("traffic",), ())
        assert map_id(two, "traffic") == map_id(one, "traffic")
        at_update = counts(two, pod.cgroup_id)[0]
        backend.update(V1, V2, pod.uid, pod.pod, EGRESS)
        backend.unload(V1)
        wait_until(lambda: counts(two, pod.cgroup_id)[0] > at_update + 200, "counting on v2")
        assert sender.proc.poll() is None, "the traffic must run across the whole update"
        sent = sender.stop()
    finally:
        sender.kill()
    # Every datagram counted once, those before the update included: v2 reads on from v1's values.
    assert counts(two, pod.cgroup_id) == (sent, sent * (SIZE + IPV4_UDP_HEADERS))
    assert [p.name for p in Path(two.pin_dir, "maps").iterdir()] == ["traffic"]


def test_a_restarted_agent_still_finds_the_layouts_and_carries_the_map(
    bpffs_root: Path, backend: BpffsBackend, pod_cgroups, sink: int
):
    one = backend.load(V1, COUNTER)
    with syscalls.closing_fd(syscalls.obj_get(f"{one.pin_dir}/maps/traffic")) as fd:
        syscalls.map_update(fd, (7).to_bytes(8, sys.byteorder), (41).to_bytes(8, sys.byteorder) * 2)
    restarted = BpffsBackend(bpffs_root, include_dirs=(INCLUDE_DIR,))
    two = restarted.load(V2, ProgramBuild(COUNTER.source + "\n/* v2 */\n", COUNTER.function, EGRESS), V1)
    assert two.kept_maps == ("traffic",)
    assert counts(two, 7) == (41, 41)
    # What was kept is read back from the pins, as status reports it after any restart.
    assert BpffsBackend(bpffs_root).loaded()[V2].kept_maps == ("traffic",)


TRAFFIC_DECL = "BPFLEET_HASH(traffic, __u64, struct traffic_counts, 10240);"  # the builtin's


@pytest.mark.parametrize(
    "change",
    [
        # Same sizes, other field names: only BCC's description of the value tells them apart.
        lambda s: s.replace("__u64 packets;\n    __u64 bytes;", "__u64 bytes;\n    __u64 packets;"),
        lambda s: s.replace(TRAFFIC_DECL, TRAFFIC_DECL.replace("10240", "4096")),
        lambda s: s.replace(
            TRAFFIC_DECL, 'BPF_TABLE("lru_hash", __u64, struct traffic_counts, traffic, 10240);'
        ),
    ],
    ids=["value-fields-reordered", "max-entries", "map-type"],
)
def test_a_map_whose_layout_changed_starts_empty(backend: BpffsBackend, change):
    one = backend.load(V1, COUNTER)
    source = change(COUNTER.source)
    assert source != COUNTER.source
    with syscalls.closing_fd(syscalls.obj_get(f"{one.pin_dir}/maps/traffic")) as fd:
        syscalls.map_update(fd, (7).to_bytes(8, sys.byteorder), (41).to_bytes(8, sys.byteorder) * 2)
    two = backend.load(V2, ProgramBuild(source, COUNTER.function, EGRESS), V1)
    assert (two.kept_maps, two.reset_maps) == ((), ("traffic",))
    assert (backend.loaded()[V2].kept_maps, backend.loaded()[V2].reset_maps) == ((), ("traffic",))
    assert map_id(two, "traffic") != map_id(one, "traffic")
    assert counts(two, 7) == (0, 0) and counts(one, 7) == (41, 41)


def test_another_programs_maps_are_never_taken_over(backend: BpffsBackend):
    other = ProgramRef("team-b", "counter", V1.version)
    theirs = backend.load(other, COUNTER)
    ours = backend.load(V2, COUNTER, other)  # a wrong previous: refused by the backend, not trusted
    assert (ours.kept_maps, ours.reset_maps) == ((), ())
    assert map_id(ours, "traffic") != map_id(theirs, "traffic")


@pytest.mark.parametrize(
    ("v2", "refusal"),
    [
        (
            ProgramBuild(COUNTER.source + "\n", COUNTER.function, EGRESS, max_map_bytes=64 << 10),
            errors.MapTooLarge,
        ),
        (
            ProgramBuild(
                COUNTER.source.replace("return 1;", "return bpf_get_current_pid_tgid() ? 1 : 1;"),
                COUNTER.function,
                EGRESS,
            ),
            errors.HelperNotAllowed,
        ),
    ],
    ids=["map-memory-cap", "helper-allowlist"],
)
def test_a_version_that_takes_over_maps_is_checked_like_any_other(
    backend: BpffsBackend, v2: ProgramBuild, refusal: type[Exception]
):
    one = backend.load(V1, COUNTER)
    with syscalls.closing_fd(syscalls.obj_get(f"{one.pin_dir}/maps/traffic")) as fd:
        syscalls.map_update(fd, (7).to_bytes(8, sys.byteorder), (41).to_bytes(8, sys.byteorder) * 2)
    with pytest.raises(refusal):
        backend.load(V2, v2, V1)
    assert not Path(one.pin_dir).with_name(V2.version).exists()
    assert counts(one, 7) == (41, 41)  # the refused build left the map it was handed as it was


EXEC = kernel_attach({"type": "Tracepoint", "name": "sched:sched_process_exec"})
EXEC_COUNTER = """
BPF_HASH(execs, __u64, __u64, 1024);

int count_exec(void *ctx)
{
    __u64 pod = bpfleet_current_pod_cgroup_id();
    execs.increment(pod);
    return 0;
}
"""


def test_the_pod_filters_maps_are_each_versions_own(backend: BpffsBackend):
    one = backend.load(V1, ProgramBuild(EXEC_COUNTER, "count_exec", EXEC))
    two = backend.load(V2, ProgramBuild(EXEC_COUNTER + "\n", "count_exec", EXEC), V1)
    assert two.kept_maps == ("execs",)
    for agents in ("bpfleet_pods", "bpfleet_progs"):
        assert map_id(two, agents) != map_id(one, agents)
    assert not any(n.startswith("bpfleet_") for n in map_reuse.pinned_layouts(Path(two.pin_dir)))


def test_no_layout_pin_no_carry(backend: BpffsBackend):
    """A version pinned before layouts existed (or one with its layout pins gone) carries nothing."""
    one = backend.load(V1, COUNTER)
    for pin in Path(one.pin_dir, map_reuse.LAYOUTS_DIR).iterdir():
        pin.unlink()
    two = backend.load(V2, ProgramBuild(COUNTER.source + "\n", COUNTER.function, EGRESS), V1)
    assert (two.kept_maps, two.reset_maps) == ((), ("traffic",))
