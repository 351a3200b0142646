"""Map export on the real kernel: pod-traffic-counter's pinned map read at scrape time, per pod."""

from __future__ import annotations

import socket
import sys
from pathlib import Path

import pytest
import yaml
from prometheus_client import CollectorRegistry

from e2e.podsim import run_in_cgroup
from node_agent.errors import KernelError, MapNotReadable
from node_agent.kernel.backend import ProgramBuild, ProgramRef
from node_agent.map_export import (
    ExportTarget,
    MapExporter,
    PodTarget,
    parse_metrics,
)
from tests.kernel.support import COUNTER, EGRESS, PROGRAMS

pytestmark = pytest.mark.kernel

COUNTER_REF = ProgramRef("team-a", "traffic-counter", "0123456789abcdef")
# The metrics the builtin ships: the test checks their offsets against the real map layout.
SHIPPED = parse_metrics(yaml.safe_load((PROGRAMS / "pod-traffic-counter.yaml").read_text())["metrics"])
IPV4_UDP_HEADERS = 20 + 8

_SEND_SCRIPT = """
import socket, sys
port, count, size = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
    for _ in range(count):
        sock.sendto(b"x" * size, ("127.0.0.1", port))
"""


class Cgroups:
    """The pod cgroups of the fixture by UID (they are not laid out under a kubelet root)."""

    def __init__(self) -> None:
        self.by_uid: dict[str, Path] = {}

    def find(self, uid: str, qos_class: str | None) -> Path | None:
        return self.by_uid.get(uid)


def send_udp(cgroup: Path, count: int, size: int) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as receiver:
        receiver.bind(("127.0.0.1", 0))
        receiver.settimeout(5)
        argv = [
            sys.executable,
            "-I",
            "-S",
            "-c",
            _SEND_SCRIPT,
            str(receiver.getsockname()[1]),
            str(count),
            str(size),
        ]
        result = run_in_cgroup(argv, cgroup, timeout=30)
        assert result.returncode == 0, result.stderr
        assert [len(receiver.recv(65536)) for _ in range(count)] == [size] * count


def scrape(exporter: MapExporter) -> dict[tuple[str, str], float]:
    """(sample name, pod) -> value."""
    registry = CollectorRegistry()
    registry.register(exporter)
    found = {}
    for family in registry.collect():
        for sample in family.samples:
            assert (sample.labels["namespace"], sample.labels["program"]) == ("team-a", "traffic-counter")
            found[(sample.name, sample.labels["pod"])] = sample.value
    return found


def test_the_traffic_counter_map_is_exported_per_pod_and_grows_by_what_a_pod_sends(backend, pod_cgroups):
    a, b, c = pod_cgroups(), pod_cgroups(), pod_cgroups()
    loaded = backend.load(COUNTER_REF, COUNTER)
    for pod in (a, b, c):
        backend.attach(COUNTER_REF, pod.uid, pod.pod, EGRESS)
    cgroups = Cgroups()
    cgroups.by_uid = {a.uid: a.pod, b.uid: b.pod}  # c is attached but no pod the exporter knows
    exporter = MapExporter(cgroups, backend)
    pods = (PodTarget("web-a", a.uid, None), PodTarget("web-b", b.uid, None))
    exporter.set_targets([ExportTarget("team-a", "traffic-counter", loaded.pin_dir, SHIPPED, pods)])
    assert scrape(exporter) == {}  # nothing sent yet: no entries

    send_udp(a.container, 5, 100)
    send_udp(b.container, 2, 10)
    send_udp(c.container, 7, 10)
    first = scrape(exporter)
    assert first == {
        ("bpfleet_pod_traffic_packets_total", "web-a"): 5,
        ("bpfleet_pod_traffic_bytes_total", "web-a"): 5 * (100 + IPV4_UDP_HEADERS),
        ("bpfleet_pod_traffic_packets_total", "web-b"): 2,
        ("bpfleet_pod_traffic_bytes_total", "web-b"): 2 * (10 + IPV4_UDP_HEADERS),
    }

    send_udp(a.container, 3, 100)
    second = scrape(exporter)
    assert second == {
        **first,
        ("bpfleet_pod_traffic_packets_total", "web-a"): 5 + 3,
        ("bpfleet_pod_traffic_bytes_total", "web-a"): (5 + 3) * (100 + IPV4_UDP_HEADERS),
    }


PERCPU_SOURCE = """
BPF_PERCPU_HASH(seen, u64, u64, 16);

int count(struct __sk_buff *skb)
{
    u64 key = 0, zero = 0;
    u64 *n = seen.lookup_or_try_init(&key, &zero);

    if (n)
        *n += 1;
    return 1;
}
"""


def test_per_cpu_maps_are_refused_not_read(backend):
    loaded = backend.load(COUNTER_REF, ProgramBuild(PERCPU_SOURCE, "count", EGRESS))
    with pytest.raises(MapNotReadable, match="per-CPU"):
        backend.read_map(f"{loaded.pin_dir}/maps/seen")


def test_only_bpfleets_own_pins_are_read(backend, bpffs_root):
    loaded = backend.load(COUNTER_REF, COUNTER)
    outside = f"{loaded.pin_dir}/../../../../{bpffs_root.name}-other/maps/x"  # a sibling of the root
    with pytest.raises(KernelError, match="not one of bpfleet's pins"):
        backend.read_map(outside)
