"""The agent's image on a node without the host's kernel headers mounted says so, as it does under
podman (e2e/tests/test_agent_image.py): the headers check names what is missing, and the agent
logs it as an error first thing at start."""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest

from e2e.cluster_tests import agents
from e2e.harness import wait_for
from e2e.kube import Kube
from e2e.tests.test_agent_image import BYTECODE_STILL_RUNS, HEADERS_CHECK, HEADERS_MISSING

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(300)]


def run_to_end(kube: Kube, namespace: str, image: str, container: dict[str, Any]) -> str:
    """A pod of the agent's image without the chart's header mounts; its log once it has exited."""
    name = f"headerless-{uuid.uuid4().hex[:6]}"
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name},
        "spec": {"restartPolicy": "Never", "containers": [{"name": "agent", "image": image, **container}]},
    }
    kube.apply(namespace, pod)
    wait_for(
        f"{name} exited",
        lambda: kube.core.read_namespaced_pod(name, namespace).status.phase in ("Succeeded", "Failed"),
        timeout=120,
        interval=0.5,
    )
    return kube.kubectl("logs", "-n", namespace, name)


def test_the_agent_image_says_it_has_no_kernel_headers(kube: Kube, namespace: str) -> None:
    image = agents.image(kube)
    said = run_to_end(kube, namespace, image, {"command": ["python", "-c", HEADERS_CHECK]}).strip()
    assert said.startswith(HEADERS_MISSING) and "kernel " in said, said

    logged = run_to_end(
        kube,
        namespace,
        image,
        {
            "env": [
                {"name": "NODE_NAME", "value": "headerless"},
                {"name": "KUBECONFIG", "value": "/nonexistent"},
            ]
        },
    )
    entries = [json.loads(line) for line in logged.splitlines() if line.startswith("{")]
    # A warning: bytecode sources and builtins (from their bytecode) still run on such a node.
    assert any(
        e["level"] == "warning" and e["msg"].startswith(HEADERS_MISSING) and BYTECODE_STILL_RUNS in e["msg"]
        for e in entries
    ), logged
