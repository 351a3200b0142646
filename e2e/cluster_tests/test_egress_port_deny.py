"""examples/egress-port-deny.yaml on a real cluster: a selected pod's connections to PORT are
refused, other ports and other pods are untouched, and deleting the program undoes it."""

from __future__ import annotations

import errno
from typing import Any

import pytest
import yaml

from e2e.cluster_tests import pods
from e2e.harness import wait_for
from e2e.kube import Kube
from e2e.tools import REPO_ROOT

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(600)]

EXAMPLE = REPO_ROOT / "examples" / "egress-port-deny.yaml"
PROGRAM = "web-no-redis"
DENIED, OTHER = pods.SERVER_PORTS


def printed(kube: Kube, namespace: str, name: str) -> dict[str, str]:
    """`kubectl get ebpf NAME` as column -> value."""
    header, row = kube.kubectl("get", "ebpf", "-n", namespace, name).splitlines()
    return dict(zip(header.split(), row.split(), strict=True))


def example(port: int) -> dict[str, Any]:
    manifest = yaml.safe_load(EXAMPLE.read_text())
    manifest["spec"]["parameters"]["PORT"] = port
    return dict(manifest)


def test_denies_the_port_to_selected_pods_until_deleted(kube: Kube, namespace: str) -> None:
    pods.start(
        kube,
        namespace,
        [pods.server(), pods.client("web-1", {"app": "web"}), pods.client("db-1", {"app": "db"})],
    )
    server = pods.ip(kube, namespace, pods.SERVER)
    assert pods.connect(kube, namespace, "web-1", server, DENIED) == 0

    kube.apply(namespace, example(DENIED))
    # Every node compiles it with its own kernel's headers: slower than on one warm host.
    wait_for(
        "READY True", lambda: printed(kube, namespace, PROGRAM)["READY"] == "True", timeout=180, interval=1
    )
    assert kube.is_ready(namespace, PROGRAM)  # and of the current generation

    status = kube.program(namespace, PROGRAM)["status"]
    nodes = len(kube.core.list_node().items)
    assert status["nodes"] == {"targeted": nodes, "ready": nodes, "failed": 0}
    assert status["pods"] == {"selected": 1, "attached": 1, "failed": 0}
    assert printed(kube, namespace, PROGRAM)["PODS"] == "1/1"

    assert pods.connect(kube, namespace, "web-1", server, DENIED) == errno.EPERM
    assert pods.connect(kube, namespace, "web-1", server, OTHER) == 0
    assert pods.connect(kube, namespace, "db-1", server, DENIED) == 0  # not selected

    kube.kubectl("delete", "ebpfprogram", "-n", namespace, PROGRAM, "--wait=true", "--timeout=120s")

    # Deleted only once every node's agent has unloaded it and dropped its status entry.
    assert kube.program(namespace, PROGRAM) is None
    assert kube.node_programs(namespace, PROGRAM) == []
    assert pods.connect(kube, namespace, "web-1", server, DENIED) == 0
