"""Server-side dry runs of program manifests, and the valid manifest of each kind that the CRD
validation tests vary."""

from __future__ import annotations

import copy
from typing import Any

import yaml

from e2e.harness import kubectl_run
from e2e.kube import Kube
from e2e.tools import REPO_ROOT

TENANT_VALID: dict[str, Any] = yaml.safe_load((REPO_ROOT / "examples" / "egress-port-deny.yaml").read_text())
CLUSTER_VALID: dict[str, Any] = {
    "apiVersion": "bpfleet.io/v1alpha1",
    "kind": "ClusterEbpfProgram",
    "metadata": {"name": "node-execs"},
    "spec": {
        "scope": "Node",
        "source": {"inline": "int count(void *ctx) { return 0; }"},
        "function": "count",
        "attach": {"type": "Tracepoint", "name": "sched:sched_process_exec"},
    },
}
# What `kubectl get` shows for either kind.
PRINTER_COLUMNS = ["NAME", "READY", "TYPE", "NODES", "PODS", "AGE"]


def dry_run(kube: Kube, manifest: dict[str, Any]) -> tuple[bool, str]:
    """(accepted, what kubectl said) for `kubectl apply --dry-run=server`."""
    result = kubectl_run(
        kube.kubeconfig,
        "apply",
        "--dry-run=server",
        "-n",
        "default",
        "-f",
        "-",
        input=yaml.safe_dump(manifest),
    )
    return result.returncode == 0, result.stdout + result.stderr


def assert_accepted(kube: Kube, manifest: dict[str, Any], context: str = "") -> None:
    accepted, output = dry_run(kube, manifest)
    assert accepted, f"{context}{output}"


def assert_refused(kube: Kube, manifest: dict[str, Any], message: str) -> None:
    """The API server refuses `manifest`, and what it says contains `message`."""
    accepted, output = dry_run(kube, manifest)
    assert not accepted
    assert message in output


def spec_variant(base: dict[str, Any], **spec_changes: Any) -> dict[str, Any]:
    """A copy of `base` with spec fields replaced (None removes one)."""
    manifest = copy.deepcopy(base)
    for key, value in spec_changes.items():
        if value is None:
            manifest["spec"].pop(key, None)
        else:
            manifest["spec"][key] = value
    return manifest
