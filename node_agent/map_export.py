"""A program's own map values as Prometheus metrics, one sample per pod, read at scrape time.

An EbpfProgram's `spec.metrics` names a map, where in its values a number sits, and how its keys
say which pod an entry is about. The only key kind is PodCgroupId: a u64 pod cgroup id, as
bpfleet.h's bpfleet_skb_pod_cgroup_id() gives, which is the inode number of the pod cgroup
directory. Entries of cgroups that are not an attached pod of the program are skipped.

Per-CPU maps hold one value per CPU and are not exported.
"""

from __future__ import annotations

import logging
import os
import re
import sys
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from bpfleet_api import names
from node_agent.errors import KernelError
from node_agent.model import Pod
from node_agent.reports import ATTACHED, CgroupResolver, ProgramReport

log = logging.getLogger(__name__)

POD_CGROUP_ID = "PodCgroupId"
LABELS = ("namespace", "pod", "program")
# The program label of a ClusterEbpfProgram's samples: no Kubernetes name contains "/".
CLUSTER_PROGRAM_PREFIX = "cluster/"
# The agent's own metrics: a map metric of that name would make the whole scrape invalid.
RESERVED_PREFIX = "bpfleet_agent_"
_NAME = re.compile(r"^[a-zA-Z_:][a-zA-Z0-9_:]*$")
# A C identifier, as the kernel keeps map names (15 characters); never a path.
_MAP = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,14}$")


class MapExportError(Exception):
    """A map that cannot be exported as declared; the message says why."""


@dataclass(frozen=True)
class MetricSpec:
    """One entry of spec.metrics."""

    name: str
    help: str
    map: str
    type: Literal["Counter", "Gauge"]
    key: str = POD_CGROUP_ID
    value_offset: int = 0
    value_size: int = 8

    @property
    def family(self) -> str:
        # prometheus_client names a counter family without _total and its sample with it.
        return self.name.removesuffix("_total") if self.type == "Counter" else self.name

    @property
    def sample(self) -> str:
        return f"{self.family}_total" if self.type == "Counter" else self.name


def parse_metrics(items: Any, where: str = "") -> tuple[MetricSpec, ...]:
    """The valid entries of a version object's spec.metrics. The EbpfProgram schema already refuses
    invalid ones; this guards the path built from `map` whatever wrote the version object."""
    specs = []
    for item in items or ():
        try:
            spec = MetricSpec(
                name=str(item["name"]),
                help=str(item.get("help") or ""),
                map=str(item["map"]),
                type=item["type"],
                key=item.get("key", POD_CGROUP_ID),
                value_offset=int(item.get("valueOffset", 0)),
                value_size=int(item.get("valueSize", 8)),
            )
            problem = _problem(spec)
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            problem = f"malformed entry: {e!r}"
        if problem:
            log.warning("metric not exported", extra={"program": where, "error": problem})
            continue
        specs.append(spec)
    return tuple(specs)


def _problem(spec: MetricSpec) -> str | None:
    if not _NAME.match(spec.name) or spec.name.startswith(RESERVED_PREFIX):
        return f"invalid metric name {spec.name!r}"
    if not _MAP.match(spec.map):
        return f"invalid map name {spec.map!r}"
    if spec.type not in ("Counter", "Gauge"):
        return f"unknown metric type {spec.type!r}"
    if spec.key != POD_CGROUP_ID:
        return f"unknown key kind {spec.key!r}"
    if spec.value_size not in (4, 8) or spec.value_offset < 0:
        return f"invalid value at offset {spec.value_offset}, size {spec.value_size}"
    return None


def decode_cgroup_id(key: bytes, byteorder: Literal["little", "big"] = sys.byteorder) -> int:
    if len(key) != 8:
        raise MapExportError(f"a PodCgroupId key is 8 bytes, this map's keys are {len(key)}")
    return int.from_bytes(key, byteorder)


def decode_value(
    value: bytes, offset: int, size: int, byteorder: Literal["little", "big"] = sys.byteorder
) -> int:
    """The unsigned number at offset; maps hold numbers in the byte order of the node."""
    if offset + size > len(value):
        raise MapExportError(f"bytes {offset}..{offset + size} are outside the {len(value)}-byte value")
    return int.from_bytes(value[offset : offset + size], byteorder)


@dataclass(frozen=True)
class PodTarget:
    name: str
    uid: str
    qos_class: str | None
    namespace: str = ""  # the pod's own; a ClusterEbpfProgram's pods are of many namespaces


@dataclass(frozen=True)
class ExportTarget:
    """A loaded program with metrics to export, and the pods it is attached to."""

    namespace: str
    program: str
    pin_dir: str
    metrics: tuple[MetricSpec, ...]
    pods: tuple[PodTarget, ...]


class MapReader(Protocol):
    """Where map contents come from: the kernel backend (KernelBackend.read_map)."""

    def read_map(self, path: str) -> list[tuple[bytes, bytes]]:
        """Every (key, value) of the map pinned at path; raises MapExportError or KernelError."""
        ...


class MapExporter(Collector):
    """Reads the maps of the programs of the last reconcile pass whenever Prometheus scrapes."""

    def __init__(
        self,
        cgroups: CgroupResolver,
        reader: MapReader | None = None,
        byteorder: Literal["little", "big"] = sys.byteorder,
    ) -> None:
        self.cgroups = cgroups
        self.reader = reader  # None: nothing to read from (no map is exported)
        self.byteorder = byteorder
        self._targets: tuple[ExportTarget, ...] = ()
        self._warned: set[tuple[str, ...]] = set()

    @property
    def targets(self) -> tuple[ExportTarget, ...]:
        return self._targets

    def set_targets(self, targets: Iterable[ExportTarget]) -> None:
        self._targets = tuple(targets)  # one assignment: a scrape sees the old list or the new

    def describe(self) -> list[Metric]:
        return []  # names come from the programs; none is known before they are loaded

    def collect(self) -> Iterator[Metric]:
        families: dict[str, Metric] = {}
        owners: dict[str, str] = {}  # family and sample names -> the family that uses them
        for target in self._targets:
            pods = self._pods_by_cgroup_id(target.pods)
            maps: dict[str, list[tuple[bytes, bytes]] | None] = {}
            for spec in target.metrics:
                family = self._family(spec, families, owners, target)
                if family is None:
                    continue
                if spec.map not in maps:
                    maps[spec.map] = self._read(target, spec.map)
                items = maps[spec.map]
                if items is None:
                    continue
                try:
                    for key, value in items:
                        pod = pods.get(decode_cgroup_id(key, self.byteorder))
                        if pod is not None:
                            number = decode_value(value, spec.value_offset, spec.value_size, self.byteorder)
                            namespace = pod.namespace or target.namespace
                            family.add_metric([namespace, pod.name, target.program], float(number))
                except MapExportError as e:
                    self._warn_once(target, spec.name, str(e))
        yield from families.values()

    def _family(
        self, spec: MetricSpec, families: dict[str, Metric], owners: dict[str, str], target: ExportTarget
    ) -> Metric | None:
        family = families.get(spec.family)
        if family is not None and family.type == spec.type.lower():
            return family
        if family is not None or spec.family in owners or spec.sample in owners:
            self._warn_once(target, spec.name, "another program exports a different metric of this name")
            return None
        help_text = spec.help or f"values of the BPF map {spec.map}"
        if spec.type == "Counter":
            family = CounterMetricFamily(spec.family, help_text, labels=LABELS)
        else:
            family = GaugeMetricFamily(spec.family, help_text, labels=LABELS)
        families[spec.family] = family
        owners[spec.family] = owners[spec.sample] = spec.family
        return family

    def _pods_by_cgroup_id(self, pods: Iterable[PodTarget]) -> dict[int, PodTarget]:
        found = {}
        for pod in pods:
            path = self.cgroups.find(pod.uid, pod.qos_class)
            if path is None:
                continue
            try:
                found[os.stat(path).st_ino] = pod  # a cgroup v2 id is its directory's inode
            except OSError:
                continue  # removed since: its entries are skipped like any unknown cgroup
        return found

    def _read(self, target: ExportTarget, map_name: str) -> list[tuple[bytes, bytes]] | None:
        path = os.path.join(target.pin_dir, "maps", map_name)
        if self.reader is None:
            return None
        try:
            return self.reader.read_map(path)
        except (MapExportError, KernelError) as e:
            self._warn_once(target, map_name, f"cannot read {path}: {e}")
            return None

    def _warn_once(self, target: ExportTarget, what: str, problem: str) -> None:
        # Scrapes repeat every few seconds; the log says it once per program version.
        key = (target.pin_dir, what, problem)
        if key not in self._warned:
            self._warned.add(key)
            log.warning(
                "map metric not exported",
                extra={"program": f"{target.namespace}/{target.program}", "metric": what, "error": problem},
            )


def export_targets(
    reports: Iterable[ProgramReport],
    objects: Mapping[tuple[str, str], Mapping[str, Any]],
    pods: Iterable[Pod],
) -> list[ExportTarget]:
    """What to export after a pass: each serving program with metrics, and its attached pods."""
    by_uid = {pod.uid: pod for pod in pods}
    targets = []
    for report in reports:
        obj = objects.get((report.namespace, report.name))
        if report.loaded is None or obj is None:
            continue
        program = report.loaded.ref.name
        if report.loaded.ref.namespace == names.CLUSTER_PIN_NAMESPACE:
            # Never the labels of a tenant's program of the same name on the same pod.
            program = f"{CLUSTER_PROGRAM_PREFIX}{program}"
        specs = parse_metrics((obj.get("spec") or {}).get("metrics"), f"{report.namespace}/{program}")
        if not specs:
            continue
        attached = [
            PodTarget(p.name, p.uid, by_uid[p.uid].qos_class, by_uid[p.uid].namespace)
            for p in report.pods
            if p.state == ATTACHED and p.uid in by_uid
        ]
        targets.append(ExportTarget(report.namespace, program, report.loaded.pin_dir, specs, tuple(attached)))
    return targets
