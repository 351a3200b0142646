"""The operator's Prometheus metrics, served apart from kopf's liveness endpoint."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import ThreadingHTTPServer

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from bpfleet_api import metrics_http
from bpfleet_operator.controller import Outcome
from bpfleet_operator.kinds import ProgramKey as Key

DEFAULT_ADDRESS = "0.0.0.0:9100"


class OperatorMetrics(Collector):
    """Its own registry (not prometheus_client's global one), so that tests can make several."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.reconcile_seconds = Histogram(
            "bpfleet_operator_reconcile_seconds",
            "Reconciling one program (EbpfProgram or ClusterEbpfProgram): its version, nodes and status",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=self.registry,
        )
        self.node_state_writes = Counter(
            "bpfleet_operator_node_state_writes",
            "EbpfNodeState spec writes (create or patch): one per node for every program changed at once",
            labelnames=("operation",),
            registry=self.registry,
        )
        self._lock = threading.Lock()  # written by the event loop, read by the HTTP thread
        self._ready: dict[Key, bool] = {}
        self.registry.register(self)

    def observe(self, key: Key, outcome: Outcome) -> None:
        """Notes a program's Ready condition after a reconcile; no status means it is gone."""
        if outcome.status is None:
            self.forget(key)
            return
        with self._lock:
            self._ready[key] = outcome.ready_after[0] == "True"

    def forget(self, key: Key) -> None:
        with self._lock:
            self._ready.pop(key, None)

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            ready = list(self._ready.values())
        family = GaugeMetricFamily(
            "bpfleet_operator_programs",
            "EbpfPrograms and ClusterEbpfPrograms by their Ready condition",
            labels=("ready",),
        )
        family.add_metric(["True"], sum(ready))
        family.add_metric(["False"], len(ready) - sum(ready))
        yield family


METRICS = OperatorMetrics()


def serve(address: str, metrics: OperatorMetrics = METRICS) -> ThreadingHTTPServer | None:
    """/metrics on address ("" disables it)."""
    return metrics_http.serve(address, metrics.registry)
