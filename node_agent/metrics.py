"""The agent's Prometheus metrics, its /healthz, and the exported map values of its programs.

Every metric lives in a registry of the agent's own, not in prometheus_client's global one, so that
several agents (in tests) each count their own.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from http.server import ThreadingHTTPServer
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from bpfleet_api import metrics_http, names
from node_agent.kernel.attach_types import KernelAttach
from node_agent.kernel.backend import Attachment, KernelBackend, LoadedProgram, ProgramBuild, ProgramRef
from node_agent.map_export import MapExporter, MapReader, export_targets
from node_agent.model import Pod
from node_agent.reports import ATTACHED, FAILED, CgroupResolver, PassResult

# Loopback: the agent is on the host network and its endpoints have no authentication, so by default
# only the node itself can reach them (docs/metrics.md says how to scrape them).
DEFAULT_ADDRESS = "127.0.0.1:9101"

_COMPILE_BUCKETS = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
_ATTACH_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.1, 1)
_PASS_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 5, 30, 120)


class _PassGauges(Collector):
    """The gauges that describe the last pass, swapped whole so a scrape never sees half a pass."""

    def __init__(self) -> None:
        # (programs loaded, pods attached by program, failures by program and reason)
        self.last: tuple[int, dict[tuple[str, str], int], dict[tuple[str, str, str], int]] = (0, {}, {})

    def collect(self) -> Iterator[Metric]:
        loaded, attached, failures = self.last
        yield GaugeMetricFamily(
            "bpfleet_agent_programs_loaded", "Program versions loaded on this node", value=loaded
        )
        family = GaugeMetricFamily(
            "bpfleet_agent_pods_attached", "Pods a program is attached to", labels=("namespace", "program")
        )
        for labels, count in sorted(attached.items()):
            family.add_metric(labels, count)
        yield family
        family = GaugeMetricFamily(
            "bpfleet_agent_failures",
            "Current failures, by program and reason (build failures and pods that failed)",
            labels=("namespace", "program", "reason"),
        )
        for labels, count in sorted(failures.items()):
            family.add_metric(labels, count)
        yield family


class AgentMetrics:
    def __init__(
        self,
        cgroups: CgroupResolver,
        map_reader: MapReader | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.registry = CollectorRegistry()
        self.clock = clock
        self.compile_seconds = Histogram(
            "bpfleet_agent_compile_seconds",
            "Compiling, verifying and pinning one program version (the compile worker)",
            buckets=_COMPILE_BUCKETS,
            registry=self.registry,
        )
        self.attach_seconds = Histogram(
            "bpfleet_agent_attach_seconds",
            "Attaching one program to one pod's cgroup",
            buckets=_ATTACH_BUCKETS,
            registry=self.registry,
        )
        self.reconcile_seconds = Histogram(
            "bpfleet_agent_reconcile_seconds",
            "One reconcile pass over every program and pod of the node",
            buckets=_PASS_BUCKETS,
            registry=self.registry,
        )
        self._gauges = _PassGauges()
        self.registry.register(self._gauges)
        self.maps = MapExporter(cgroups, map_reader)
        self.registry.register(self.maps)
        self._lock = threading.Lock()
        self._last_progress: float | None = None  # when a pass or a compile last ended
        self._compiling = 0

    def timed(self, backend: KernelBackend) -> TimedBackend:
        return TimedBackend(backend, self)

    @contextmanager
    def compiling(self) -> Iterator[None]:
        with self._lock:
            self._compiling += 1
        try:
            with self.compile_seconds.time():
                yield
        finally:
            with self._lock:
                self._compiling -= 1
                self._last_progress = self.clock()

    def pass_done(
        self,
        result: PassResult,
        objects: Mapping[tuple[str, str], Mapping[str, Any]],
        pods: Iterable[Pod],
        seconds: float,
    ) -> None:
        """Called after each pass with what it found: the node's programs by (namespace, name)."""
        self.reconcile_seconds.observe(seconds)
        attached: dict[tuple[str, str], int] = {}
        failures: Counter[tuple[str, str, str]] = Counter()
        loaded = 0
        for report in result.reports:
            program = _program_name(objects.get((report.namespace, report.name)) or {}, report.name)
            loaded += report.loaded is not None
            attached[(report.namespace, program)] = sum(p.state == ATTACHED for p in report.pods)
            if report.build_error is not None:
                failures[(report.namespace, program, report.build_error.reason)] += 1
            for pod in report.pods:
                if pod.state == FAILED:
                    failures[(report.namespace, program, pod.reason)] += 1
        self._gauges.last = (loaded, attached, dict(failures))
        self.maps.set_targets(export_targets(result.reports, objects, pods))
        with self._lock:
            self._last_progress = self.clock()

    def health_problem(self, synced: bool, resync: float) -> str | None:
        """What makes the agent unhealthy, or None. A compile counts as progress: it is bounded by
        its own timeout, which may be longer than two resync periods."""
        if not synced:
            return "the program and pod caches have not synced"
        with self._lock:
            if self._compiling:
                return None
            if self._last_progress is None:
                return "no reconcile pass has ended yet"
            age = self.clock() - self._last_progress
        if age >= 2 * resync:
            return f"the last reconcile pass ended {age:.0f}s ago"
        return None


def _program_name(obj: Mapping[str, Any], fallback: str) -> str:
    labels = (obj.get("metadata") or {}).get("labels") or {}
    return (obj.get("spec") or {}).get("programName") or labels.get(names.PROGRAM_LABEL) or fallback


class TimedBackend:
    """A KernelBackend that times compiles and attaches; everything else goes straight through."""

    def __init__(self, backend: KernelBackend, metrics: AgentMetrics) -> None:
        self.backend, self.metrics = backend, metrics

    def loaded(self) -> dict[ProgramRef, LoadedProgram]:
        return self.backend.loaded()

    def load(self, ref: ProgramRef, build: ProgramBuild, previous: ProgramRef | None = None) -> LoadedProgram:
        with self.metrics.compiling():
            return self.backend.load(ref, build, previous)

    def unload(self, ref: ProgramRef) -> None:
        self.backend.unload(ref)

    def attachments(self, ref: ProgramRef) -> dict[str, Attachment]:
        return self.backend.attachments(ref)

    def attach(
        self,
        ref: ProgramRef,
        pod_uid: str,
        cgroup_dir: Path,
        attach: KernelAttach,
        *,
        container_id: str = "",
    ) -> Attachment:
        with self.metrics.attach_seconds.time():
            return self.backend.attach(ref, pod_uid, cgroup_dir, attach, container_id=container_id)

    def detach(self, ref: ProgramRef, pod_uid: str) -> None:
        self.backend.detach(ref, pod_uid)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.backend, name)  # what the backend gains later works through this too


def serve(
    address: str, metrics: AgentMetrics, synced: Callable[[], bool], resync: float
) -> ThreadingHTTPServer | None:
    """/metrics and /healthz on address ("" disables them). `synced`: whether the agent's caches
    are full; the agent is not imported here, so that the agent can import its metrics."""

    def health() -> str | None:
        return metrics.health_problem(synced(), resync)

    return metrics_http.serve(address, metrics.registry, health)
