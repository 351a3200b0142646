"""Server-side dry runs of manifests, as the CRD validation tests make them."""

from __future__ import annotations

import copy
from typing import Any

import yaml

from e2e.harness import kubectl_run
from e2e.kube import Kube


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


def spec_variant(base: dict[str, Any], **spec_changes: Any) -> dict[str, Any]:
    """A copy of `base` with spec fields replaced (None removes one)."""
    manifest = copy.deepcopy(base)
    for key, value in spec_changes.items():
        if value is None:
            manifest["spec"].pop(key, None)
        else:
            manifest["spec"][key] = value
    return manifest
