"""Feature probing and map reading go through the kernel backend, and the agent's modules import
each other one way only."""

from __future__ import annotations

import subprocess
import sys

from node_agent import features
from node_agent.kernel import attach_types as at
from node_agent.map_export import ExportTarget, MapExporter, MetricSpec, PodTarget
from tests.unit.fakes import FakeBackend, FakeCgroups


def test_program_types_are_probed_through_the_backend():
    kernel = FakeBackend(missing_program_types={at.PROG_TYPE_XDP})
    probed = features.probe(kernel)
    assert probed.program_types["Xdp"] is False and probed.program_types["CgroupSkb"] is True
    if probed.no_headers is None:  # without headers nothing is supported, whatever the types
        assert "does not load Xdp programs" in (probed.unsupported("Xdp") or "")
        assert probed.unsupported("CgroupSkb") is None


def test_map_metrics_read_through_the_backend(caplog):
    kernel, cgroups = FakeBackend(), FakeCgroups()
    exporter = MapExporter(cgroups, kernel)
    spec = MetricSpec("pod_packets_total", "", "counts", "Counter")
    pods = (PodTarget("web-1", "uid-web-1", None),)
    exporter.set_targets([ExportTarget("shop", "counter", "/fake/shop/counter/v", (spec,), pods)])
    kernel.maps["/fake/shop/counter/v/maps/counts"] = []
    assert [m.name for m in exporter.collect()] == ["pod_packets"]
    assert "map metric not exported" not in caplog.text  # the backend had the map
    del kernel.maps["/fake/shop/counter/v/maps/counts"]
    assert [m.samples for m in exporter.collect()] == [[]]
    [warning] = [r for r in caplog.records if r.getMessage() == "map metric not exported"]
    assert "No such file or directory (/fake/shop/counter/v/maps/counts)" in warning.error


def test_metrics_and_map_export_import_neither_the_agent_nor_the_reconciler():
    code = (
        "import sys, node_agent.metrics, node_agent.map_export, node_agent.status; "
        "print(sorted(m for m in sys.modules if m in ('node_agent.agent', 'node_agent.reconcile')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
