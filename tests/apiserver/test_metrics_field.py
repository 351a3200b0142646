"""The API server checks spec.metrics: names, a map that can never be a path, sizes, uniqueness."""

from __future__ import annotations

import json
from typing import Any

import pytest
import yaml

from e2e.harness import kubectl_run
from e2e.kube import Kube
from e2e.tools import REPO_ROOT

pytestmark = pytest.mark.apiserver

COUNTER: dict[str, Any] = yaml.safe_load((REPO_ROOT / "examples" / "pod-traffic-counter.yaml").read_text())
PACKETS = {"name": "pod_packets_total", "map": "traffic", "type": "Counter"}


def dry_run(kube: Kube, metrics: list[dict[str, Any]]) -> tuple[bool, str]:
    manifest = {**COUNTER, "spec": {**COUNTER["spec"], "metrics": metrics}}
    result = kubectl_run(
        kube.kubeconfig,
        *("create", "--dry-run=server", "-o", "json", "-n", "default", "-f", "-"),
        input=yaml.safe_dump(manifest),
    )
    return result.returncode == 0, result.stdout + result.stderr


def test_defaults_are_filled_in(crds: Kube):
    accepted, output = dry_run(crds, [PACKETS, {"name": "b", "map": "traffic", "type": "Gauge", "help": "h"}])
    assert accepted, output
    assert json.loads(output)["spec"]["metrics"] == [
        {**PACKETS, "key": "PodCgroupId", "valueOffset": 0, "valueSize": 8},
        {
            "name": "b",
            "map": "traffic",
            "type": "Gauge",
            "help": "h",
            "key": "PodCgroupId",
            "valueOffset": 0,
            "valueSize": 8,
        },
    ]


@pytest.mark.parametrize(
    ("metrics", "message"),
    [
        pytest.param(
            [{**PACKETS, "name": "pod-packets"}], "spec.metrics[0].name in body should match", id="name"
        ),
        pytest.param(
            [{**PACKETS, "map": "../../x/maps/y"}], "spec.metrics[0].map in body should match", id="path"
        ),
        pytest.param(
            [{**PACKETS, "map": "a_map_name_over_15"}], "spec.metrics[0].map: Too long", id="long map"
        ),
        pytest.param(
            [{**PACKETS, "type": "Histogram"}],
            'spec.metrics[0].type: Unsupported value: "Histogram"',
            id="type",
        ),
        pytest.param(
            [{**PACKETS, "key": "PodUid"}], 'spec.metrics[0].key: Unsupported value: "PodUid"', id="key"
        ),
        pytest.param(
            [{**PACKETS, "valueSize": 2}], "spec.metrics[0].valueSize: Unsupported value: 2", id="size"
        ),
        pytest.param(
            [{**PACKETS, "valueOffset": -8}],
            "spec.metrics[0].valueOffset in body should be greater",
            id="offset",
        ),
        pytest.param([{"name": "x", "type": "Gauge"}], "spec.metrics[0].map: Required value", id="no map"),
        pytest.param(
            [PACKETS, {**PACKETS, "valueOffset": 8}], "spec.metrics[1]: Duplicate value", id="duplicate"
        ),
        pytest.param(
            [{**PACKETS, "name": f"m{i}"} for i in range(17)],
            "spec.metrics: Too many: 17: must have at most 16",
            id="17",
        ),
    ],
)
def test_invalid_metrics_are_refused(crds: Kube, metrics: list[dict[str, Any]], message: str):
    accepted, output = dry_run(crds, metrics)
    assert not accepted
    assert message in output
