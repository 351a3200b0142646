"""Metrics of the agent and the operator, and the export of map values, without a kernel."""

from __future__ import annotations

import os
import struct
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from bpfleet_api import metrics_http, reasons
from bpfleet_operator import fanout
from bpfleet_operator.builtins import metrics_for
from bpfleet_operator.controller import Outcome
from bpfleet_operator.metrics import OperatorMetrics
from bpfleet_operator.sources import ResolvedSource
from node_agent import errors
from node_agent.cgroups import PodCgroupResolver
from node_agent.kernel.backend import LoadedProgram, ProgramRef
from node_agent.map_export import (
    ExportTarget,
    MapExporter,
    MapExportError,
    MetricSpec,
    PodTarget,
    decode_cgroup_id,
    decode_value,
    export_targets,
    parse_metrics,
)
from node_agent.metrics import AgentMetrics
from node_agent.model import Pod
from node_agent.reconcile import ATTACHED, PodReport, ProgramReport, Reconciler
from tests.unit.builders import node_program, parsed, pod
from tests.unit.fakes import FakeBackend

WEB = {"app": "web"}
PACKETS = {"name": "pod_packets_total", "map": "traffic", "type": "Counter"}
BYTES = {"name": "pod_bytes_total", "map": "traffic", "type": "Counter", "valueOffset": 8}


def traffic_value(packets: int, nbytes: int) -> bytes:
    return struct.pack("=QQ", packets, nbytes)


def key(cgroup_id: int) -> bytes:
    return struct.pack("=Q", cgroup_id)


class FakeMaps:
    """Map contents by pin path; counts reads."""

    def __init__(self) -> None:
        self.maps: dict[str, list[tuple[bytes, bytes]]] = {}
        self.reads: list[str] = []

    def read_map(self, path: str) -> list[tuple[bytes, bytes]]:
        self.reads.append(path)
        if path not in self.maps:
            raise errors.KernelError(f"bpf cmd 7: No such file or directory ({path})", errno=2)
        return self.maps[path]


class PodDirs:
    """Pod cgroup directories laid out as kubelet does, in a temporary folder (inodes are ids)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.resolver = PodCgroupResolver(root)

    def make(self, uid: str) -> int:
        path = self.root / "kubepods" / "besteffort" / f"pod{uid}"
        path.mkdir(parents=True)
        return os.stat(path).st_ino


@pytest.fixture
def pod_dirs(tmp_path: Path) -> PodDirs:
    return PodDirs(tmp_path)


def samples(registry: CollectorRegistry, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    return {
        tuple(sorted(s.labels.items())): s.value
        for family in registry.collect()
        for s in family.samples
        if s.name == name
    }


def labels(namespace: str, pod: str, program: str) -> tuple[tuple[str, str], ...]:
    return (("namespace", namespace), ("pod", pod), ("program", program))


# --- decoding ----------------------------------------------------------------------------------


def test_keys_and_values_decode_in_the_given_byte_order():
    assert decode_cgroup_id(bytes([0x39, 0x30, 0, 0, 0, 0, 0, 0]), "little") == 12345
    assert decode_cgroup_id(bytes([0, 0, 0, 0, 0, 0, 0x30, 0x39]), "big") == 12345
    value = bytes([7, 0, 0, 0, 0, 0, 0, 0, 0x10, 0x27, 0, 0, 0xFF, 0xFF, 0xFF, 0xFF])
    assert decode_value(value, 0, 8, "little") == 7
    assert decode_value(value, 8, 4, "little") == 10000
    assert decode_value(value, 12, 4, "little") == 2**32 - 1  # unsigned
    assert decode_value(value, 8, 8, "little") == 10000 + ((2**32 - 1) << 32)


def test_keys_of_another_size_and_values_too_short_are_refused():
    with pytest.raises(MapExportError, match="8 bytes"):
        decode_cgroup_id(b"\x01\x00\x00\x00")
    with pytest.raises(MapExportError, match="outside the 16-byte value"):
        decode_value(bytes(16), 12, 8)


def test_metric_entries_get_defaults_and_invalid_ones_are_dropped():
    assert parse_metrics([PACKETS]) == (MetricSpec("pod_packets_total", "", "traffic", "Counter"),)
    parsed = parse_metrics(
        [
            {**PACKETS, "name": "ok", "valueOffset": 8, "valueSize": 4, "help": "h"},
            {**PACKETS, "map": "../../other/prog/maps/traffic"},  # never a path outside the program
            {**PACKETS, "map": "a/b"},
            {**PACKETS, "name": "bpfleet_agent_programs_loaded"},  # the agent's own
            {**PACKETS, "name": "1x"},
            {**PACKETS, "type": "Histogram"},
            {**PACKETS, "key": "PodUid"},
            {**PACKETS, "valueSize": 2},
            {**PACKETS, "valueOffset": -1},
            {"map": "traffic", "type": "Counter"},
            "not a mapping",
        ]
    )
    assert parsed == (MetricSpec("ok", "h", "traffic", "Counter", value_offset=8, value_size=4),)
    assert parse_metrics(None) == ()


# --- the collector ---------------------------------------------------------------------------


def exporter_with(pod_dirs: PodDirs, maps: FakeMaps, *targets: ExportTarget) -> CollectorRegistry:
    exporter = MapExporter(pod_dirs.resolver, maps)
    exporter.set_targets(targets)
    registry = CollectorRegistry()
    registry.register(exporter)
    return registry


def test_samples_are_per_attached_pod_and_other_cgroups_are_skipped(pod_dirs):
    web_1, web_2 = pod_dirs.make("u1"), pod_dirs.make("u2")
    maps = FakeMaps()
    maps.maps["/pins/counter/maps/traffic"] = [
        (key(web_1), traffic_value(5, 640)),
        (key(web_2), traffic_value(1, 100)),
        (key(0), traffic_value(9, 900)),  # no socket cgroup
        (key(web_1 + 1_000_000), traffic_value(3, 300)),  # a cgroup that is no attached pod
    ]
    pods = (PodTarget("web-1", "u1", "BestEffort"), PodTarget("web-2", "u2", None))
    specs = parse_metrics([PACKETS, BYTES])
    registry = exporter_with(pod_dirs, maps, ExportTarget("shop", "counter", "/pins/counter", specs, pods))

    assert samples(registry, "pod_packets_total") == {
        labels("shop", "web-1", "counter"): 5,
        labels("shop", "web-2", "counter"): 1,
    }
    assert samples(registry, "pod_bytes_total") == {
        labels("shop", "web-1", "counter"): 640,
        labels("shop", "web-2", "counter"): 100,
    }
    maps.reads.clear()
    list(registry.collect())
    assert maps.reads == ["/pins/counter/maps/traffic"]  # one read per map and scrape


def test_gauges_counters_without_total_and_a_pod_whose_cgroup_is_gone(pod_dirs):
    web_1 = pod_dirs.make("u1")
    maps = FakeMaps()
    maps.maps["/pins/p/maps/stats"] = [(key(web_1), struct.pack("=II", 3, 42))]
    specs = parse_metrics(
        [
            {"name": "open_sockets", "map": "stats", "type": "Gauge", "valueOffset": 4, "valueSize": 4},
            {"name": "events", "map": "stats", "type": "Counter", "valueSize": 4},
        ]
    )
    pods = (PodTarget("web-1", "u1", None), PodTarget("web-9", "u9", None))  # u9 has no cgroup
    registry = exporter_with(pod_dirs, maps, ExportTarget("shop", "p", "/pins/p", specs, pods))

    exposed = {f.name: f.type for f in registry.collect()}
    assert exposed == {"open_sockets": "gauge", "events": "counter"}
    assert samples(registry, "open_sockets") == {labels("shop", "web-1", "p"): 42}
    assert samples(registry, "events_total") == {labels("shop", "web-1", "p"): 3}


def test_one_family_across_programs_and_conflicts_unreadable_maps_and_bad_offsets_skipped(pod_dirs):
    a, b, c = pod_dirs.make("ua"), pod_dirs.make("ub"), pod_dirs.make("uc")
    maps = FakeMaps()
    maps.maps["/pins/one/maps/traffic"] = [(key(a), traffic_value(1, 10))]
    maps.maps["/pins/two/maps/traffic"] = [(key(b), traffic_value(2, 20))]
    maps.maps["/pins/three/maps/traffic"] = [(key(c), traffic_value(3, 30))]
    one = ExportTarget("ns-1", "one", "/pins/one", parse_metrics([PACKETS]), (PodTarget("a", "ua", None),))
    two = ExportTarget(
        "ns-2",
        "two",
        "/pins/two",
        parse_metrics(
            [PACKETS, {**BYTES, "valueOffset": 12}, {"name": "gone", "map": "nope", "type": "Gauge"}]
        ),
        (PodTarget("b", "ub", None),),
    )
    # Same name, other type: exporting both would make the scrape invalid.
    three = ExportTarget(
        "ns-3",
        "three",
        "/pins/three",
        parse_metrics(
            [{**PACKETS, "type": "Gauge"}, {"name": "pod_packets", "map": "traffic", "type": "Gauge"}]
        ),
        (PodTarget("c", "uc", None),),
    )
    registry = exporter_with(pod_dirs, maps, one, two, three)

    assert samples(registry, "pod_packets_total") == {
        labels("ns-1", "a", "one"): 1,
        labels("ns-2", "b", "two"): 2,
    }
    assert samples(registry, "pod_bytes_total") == {}  # bytes 12..20 of a 16-byte value
    assert samples(registry, "pod_packets") == {}  # the counter's family name
    assert samples(registry, "gone") == {}
    assert "/pins/two/maps/nope" in maps.reads


# --- the agent ----------------------------------------------------------------------------------


def counter_object(metrics: list[dict] | None = None, name: str = "counter") -> dict:
    obj = node_program(name=name)
    if metrics is not None:
        obj["spec"]["metrics"] = metrics
    return obj


def agent_pass(metrics: AgentMetrics, reconciler: Reconciler, objects: list[dict], pods: list[dict]):
    by_key = {(o["metadata"]["namespace"], o["metadata"]["name"]): o for o in objects}
    parsed_pods = [Pod.from_object(p) for p in pods]
    result = reconciler.run([parsed(o) for o in objects], parsed_pods)
    metrics.pass_done(result, by_key, parsed_pods, 0.01)
    return result


def test_after_a_pass_gauges_and_map_samples_describe_the_node(pod_dirs):
    maps = FakeMaps()
    metrics = AgentMetrics(pod_dirs.resolver, maps)
    kernel = FakeBackend(broken_sources={"broken": errors.CompileError("program.c:1:1: error: x")})
    kernel.refuse_attach.add("uid-web-3")
    reconciler = Reconciler(metrics.timed(kernel), pod_dirs.resolver)
    web_1, _ = pod_dirs.make("uid-web-1"), pod_dirs.make("uid-web-2")
    pod_dirs.make("uid-web-3")
    objects = [
        counter_object([PACKETS]),
        counter_object(name="plain"),
        counter_object(name="bad"),
    ]
    objects[2]["spec"]["source"]["text"] = "broken"
    pods = [pod("web-1", WEB), pod("web-2", WEB), pod("web-3", WEB), pod("db-1", {"app": "db"})]

    agent_pass(metrics, reconciler, objects, pods)

    registry = metrics.registry
    assert registry.get_sample_value("bpfleet_agent_programs_loaded") == 2
    assert samples(registry, "bpfleet_agent_pods_attached") == {
        (("namespace", "shop"), ("program", "counter")): 2,
        (("namespace", "shop"), ("program", "plain")): 2,
        (("namespace", "shop"), ("program", "bad")): 0,
    }
    assert samples(registry, "bpfleet_agent_failures") == {
        (("namespace", "shop"), ("program", "counter"), ("reason", reasons.ATTACH_FAILED)): 1,
        (("namespace", "shop"), ("program", "plain"), ("reason", reasons.ATTACH_FAILED)): 1,
        (("namespace", "shop"), ("program", "bad"), ("reason", reasons.COMPILE_ERROR)): 1,
    }
    assert registry.get_sample_value("bpfleet_agent_compile_seconds_count") == 3
    assert registry.get_sample_value("bpfleet_agent_attach_seconds_count") == 6  # refusals included
    assert registry.get_sample_value("bpfleet_agent_reconcile_seconds_count") == 1

    [target] = metrics.maps.targets  # only the program with metrics, only its attached pods
    assert (target.namespace, target.program) == ("shop", "counter")
    assert [p.name for p in target.pods] == ["web-1", "web-2"]
    maps.maps[f"{target.pin_dir}/maps/traffic"] = [(key(web_1), traffic_value(4, 400))]
    assert samples(registry, "pod_packets_total") == {labels("shop", "web-1", "counter"): 4}

    # Once the pods and the failing program are gone, so are their samples.
    agent_pass(metrics, reconciler, objects[:1], [])
    assert samples(registry, "bpfleet_agent_pods_attached") == {
        (("namespace", "shop"), ("program", "counter")): 0
    }
    assert samples(registry, "bpfleet_agent_failures") == {}
    assert samples(registry, "pod_packets_total") == {}
    assert registry.get_sample_value("bpfleet_agent_programs_loaded") == 1


def test_several_agents_each_count_their_own(pod_dirs):
    first, second = AgentMetrics(pod_dirs.resolver), AgentMetrics(pod_dirs.resolver)
    first.reconcile_seconds.observe(1)
    assert first.registry.get_sample_value("bpfleet_agent_reconcile_seconds_count") == 1
    assert second.registry.get_sample_value("bpfleet_agent_reconcile_seconds_count") == 0


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_healthy_once_synced_and_while_passes_or_compiles_keep_ending(pod_dirs):
    clock = Clock()
    metrics = AgentMetrics(pod_dirs.resolver, clock=clock)
    reconciler = Reconciler(FakeBackend(), pod_dirs.resolver)
    assert metrics.health_problem(False, 30) == "the program and pod caches have not synced"
    assert metrics.health_problem(True, 30) == "no reconcile pass has ended yet"

    agent_pass(metrics, reconciler, [], [])
    clock.now += 59
    assert metrics.health_problem(True, 30) is None
    clock.now += 2
    assert metrics.health_problem(True, 30) == "the last reconcile pass ended 61s ago"

    with metrics.compiling():  # a long compile is progress, bounded by the compile timeout
        clock.now += 100
        assert metrics.health_problem(True, 30) is None
    assert metrics.health_problem(True, 30) is None
    clock.now += 60
    assert metrics.health_problem(True, 30) == "the last reconcile pass ended 60s ago"


def test_the_timed_backend_passes_everything_else_through(pod_dirs):
    kernel = FakeBackend()
    timed = AgentMetrics(pod_dirs.resolver).timed(kernel)
    assert timed.links is kernel.links  # what the backend has beyond KernelBackend
    assert timed.cgroup_removed == kernel.cgroup_removed


# --- HTTP ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("address", "expected"),
    [("0.0.0.0:9101", ("0.0.0.0", 9101)), (":9100", ("0.0.0.0", 9100)), ("[::1]:80", ("::1", 80))],
)
def test_addresses(address, expected):
    assert metrics_http.parse_address(address) == expected


@pytest.mark.parametrize("address", ["9101", "host:", "host:http"])
def test_bad_addresses(address):
    with pytest.raises(ValueError, match="host:port"):
        metrics_http.parse_address(address)


def get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def test_metrics_and_health_over_http():
    metrics = OperatorMetrics()
    metrics.reconcile_seconds.observe(0.2)
    problem: list[str] = []
    assert metrics_http.serve("", metrics.registry) is None
    server = metrics_http.serve("127.0.0.1:0", metrics.registry, lambda: problem[0] if problem else None)
    assert server is not None
    try:
        base = f"http://127.0.0.1:{server.server_address[1]}"
        status, body = get(f"{base}/metrics")
        assert status == 200
        assert "bpfleet_operator_reconcile_seconds_count 1.0" in body
        assert get(f"{base}/healthz") == (200, "ok\n")
        problem.append("the last reconcile pass ended 75s ago")
        assert get(f"{base}/healthz") == (503, "the last reconcile pass ended 75s ago\n")
        assert get(f"{base}/other")[0] == 404
    finally:
        server.shutdown()
        server.server_close()


# --- the operator -------------------------------------------------------------------------------


def test_operator_counts_programs_by_ready():
    metrics = OperatorMetrics()
    ready = Outcome(status={}, ready_after=("True", "Ready"))
    not_ready = Outcome(status={}, ready_after=("False", reasons.COMPILE_ERROR))
    metrics.observe(("a", "one"), ready)
    metrics.observe(("a", "two"), ready)
    metrics.observe(("b", "one"), not_ready)
    metrics.observe(("a", "two"), not_ready)  # changed, still counted once
    assert samples(metrics.registry, "bpfleet_operator_programs") == {
        (("ready", "True"),): 1,
        (("ready", "False"),): 2,
    }
    metrics.observe(("a", "one"), Outcome())  # gone or being deleted
    metrics.forget(("b", "one"))
    assert metrics.registry.get_sample_value("bpfleet_operator_programs", {"ready": "True"}) == 0
    assert metrics.registry.get_sample_value("bpfleet_operator_programs", {"ready": "False"}) == 1


def test_builtins_bring_their_metrics_unless_the_program_sets_its_own():
    counter = {"source": {"builtin": "pod-traffic-counter"}}
    names = [(m["name"], m["valueOffset"]) for m in metrics_for(counter)]
    assert names == [("bpfleet_pod_traffic_packets_total", 0), ("bpfleet_pod_traffic_bytes_total", 8)]
    assert len(parse_metrics(metrics_for(counter))) == 2  # the agent accepts them as shipped
    assert metrics_for({**counter, "metrics": [PACKETS]}) == [PACKETS]
    assert metrics_for({**counter, "metrics": []}) == []  # explicitly none
    assert metrics_for({"source": {"builtin": "egress-port-deny"}}) == []
    assert metrics_for({"source": {"inline": "int x;"}}) == []


def test_versions_carry_the_metrics():
    spec = {"function": "count_packets", "attach": {"type": "CgroupSkb", "direction": "Egress"}}
    program = {"metadata": {"name": "p", "namespace": "shop", "uid": "u"}}
    source = ResolvedSource("int x;", "builtin:pod-traffic-counter")
    builtin = {**program, "spec": {**spec, "source": {"builtin": "pod-traffic-counter"}}}
    assert len(fanout.Version(builtin, source).spec()["metrics"]) == 2
    inline = {**program, "spec": {**spec, "source": {"inline": "int x;"}}}
    assert "metrics" not in fanout.Version(inline, source).spec()
    own = {**program, "spec": {**spec, "source": {"inline": "int x;"}, "metrics": [PACKETS]}}
    assert fanout.Version(own, source).spec()["metrics"] == [PACKETS]


def test_a_cluster_programs_samples_carry_each_pods_namespace_and_never_a_tenants_labels(pod_dirs):
    shop, bank = pod_dirs.make("u-shop"), pod_dirs.make("u-bank")
    maps = FakeMaps()
    maps.maps["/pins/_cluster/counter/maps/traffic"] = [
        (key(shop), traffic_value(4, 40)),
        (key(bank), traffic_value(6, 60)),
    ]
    maps.maps["/pins/shop/counter/maps/traffic"] = [(key(shop), traffic_value(1, 10))]
    pods = [
        Pod("shop", "web", "u-shop", {"app": "web"}, None, "Running", False),
        Pod("bank", "web", "u-bank", {"app": "web"}, None, "Running", False),
    ]
    cluster = ProgramReport(
        "bpfleet-system",
        "counter-node-a-0123456789",
        1,
        "v1",
        loaded=LoadedProgram(
            ProgramRef("_cluster", "counter", "v1"), 7, "/pins/_cluster/counter", ("traffic",)
        ),
        pods=[
            PodReport("web", "u-shop", ATTACHED, namespace="shop"),
            PodReport("web", "u-bank", ATTACHED, namespace="bank"),
        ],
    )
    tenant = ProgramReport(
        "shop",
        "counter-node-a-abcdef0123",
        1,
        "v1",
        loaded=LoadedProgram(ProgramRef("shop", "counter", "v1"), 8, "/pins/shop/counter", ("traffic",)),
        pods=[PodReport("web", "u-shop", ATTACHED)],
    )
    objects = {(r.namespace, r.name): {"spec": {"metrics": [PACKETS]}} for r in (cluster, tenant)}
    registry = exporter_with(pod_dirs, maps, *export_targets([cluster, tenant], objects, pods))

    assert samples(registry, "pod_packets_total") == {
        labels("shop", "web", "cluster/counter"): 4,
        labels("bank", "web", "cluster/counter"): 6,
        labels("shop", "web", "counter"): 1,
    }
