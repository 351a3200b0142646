"""What the chart's tests share: helm in a home of its own, releases installed and always removed,
and credentials of the chart's ServiceAccounts the way their pods would hold them."""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import kubernetes
import pytest
import yaml
from kubernetes.client import ApiClient

from e2e.harness import wait_for
from e2e.kube import Kube
from e2e.tools import REPO_ROOT, tool_path

CHART = REPO_ROOT / "charts" / "bpfleet"
# The claim the API server adds to the user of a token bound to a pod on a node.
NODE_NAME_CLAIM = "authentication.kubernetes.io/node-name"


def helm(home: Path, *args: str, kubeconfig: Path | None = None) -> subprocess.CompletedProcess[str]:
    """Helm with its config, cache and data under `home`: the tests never read or write the user's."""
    env = {
        **os.environ,
        "HELM_CONFIG_HOME": str(home / "config"),
        "HELM_CACHE_HOME": str(home / "cache"),
        "HELM_DATA_HOME": str(home / "data"),
    }
    argv = [str(tool_path("helm")), *args]
    if kubeconfig is not None:
        argv += ["--kubeconfig", str(kubeconfig)]
    return subprocess.run(argv, capture_output=True, text=True, env=env, check=False, timeout=180)


def helm_ok(home: Path, *args: str, kubeconfig: Path | None = None) -> str:
    result = helm(home, *args, kubeconfig=kubeconfig)
    assert result.returncode == 0, f"helm {' '.join(args)}:\n{result.stdout}\n{result.stderr}"
    return result.stdout


def documents(text: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(text) if d]


def rendered(home: Path, *flags: str) -> dict[tuple[str, str], dict[str, Any]]:
    """(kind, name) -> object of `helm template r` in namespace bpfleet-system."""
    text = helm_ok(home, "template", "r", str(CHART), "-n", "bpfleet-system", *flags)
    return {(d["kind"], d["metadata"]["name"]): d for d in documents(text)}


def can_i(kube: Kube, user: str, *ask: str) -> bool:
    """`kubectl auth can-i <ask>` as `user`."""
    return kube.kubectl("auth", "can-i", *ask, "--as", user, check=False).strip() == "yes"


def can_i_params(table: list[tuple[str, str, bool]]) -> list[Any]:
    """A (who, what it asks, granted?) table as pytest parameters, each named by its row."""
    return [pytest.param(*row, id=f"{row[0]} {row[1]}: {'yes' if row[2] else 'no'}") for row in table]


def unique(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(3)}"


@dataclass
class Release:
    name: str
    namespace: str

    @property
    def operator(self) -> str:
        return f"{self.name}-bpfleet-operator"

    @property
    def agent(self) -> str:
        return f"{self.name}-bpfleet-agent"

    @property
    def agent_user(self) -> str:
        return f"system:serviceaccount:{self.namespace}:{self.agent}"

    @property
    def policies(self) -> list[str]:
        """The agents' node-binding ValidatingAdmissionPolicies (and their bindings' names)."""
        return [f"{self.agent}-ebpfnodestates", f"{self.agent}-bpfleetnodes"]


@contextlib.contextmanager
def installed_release(kube: Kube, namespace: str, home: Path, *flags: str) -> Iterator[Release]:
    """The chart installed into `namespace`; uninstalled afterwards, whatever the test did."""
    installed = Release(unique("rel"), namespace)
    try:
        # The session's CRDs were applied from crds/ by kubectl; Helm 4 would apply its copies again
        # as a second field manager (docs/install.md), so it skips them as a user would.
        helm_ok(
            home, "install", installed.name, str(CHART), "-n", namespace, "--skip-crds", *flags,
            kubeconfig=kube.kubeconfig,
        )  # fmt: skip
        yield installed
    finally:
        helm(home, "uninstall", installed.name, "-n", namespace, kubeconfig=kube.kubeconfig)


@contextlib.contextmanager
def scratch_namespace(kube: Kube, prefix: str) -> Iterator[str]:
    name = unique(prefix)
    kube.kubectl("create", "namespace", name)
    try:
        yield name
    finally:
        kube.kubectl("delete", "namespace", name, "--wait=false", check=False)


def token_kubeconfig(kube: Kube, token: str, path: Path, user: str = "token") -> Path:
    """A kubeconfig for the same API server that authenticates with `token` alone."""
    admin = yaml.safe_load(kube.kubeconfig.read_text())
    context = next(c for c in admin["contexts"] if c["name"] == admin["current-context"])["context"]
    cluster = next(c for c in admin["clusters"] if c["name"] == context["cluster"])["cluster"]
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "bpfleet", "cluster": cluster}],
        "users": [{"name": user, "user": {"token": token}}],
        "contexts": [{"name": user, "context": {"cluster": "bpfleet", "user": user}}],
        "current-context": user,
    }
    path.write_text(yaml.safe_dump(config))
    path.chmod(0o600)
    return path


def unbound_token(kube: Kube, namespace: str, account: str) -> str:
    """A token of the ServiceAccount bound to nothing (what `kubectl create token` gives)."""
    return kube.kubectl("create", "token", account, "-n", namespace, "--duration=1h").strip()


def pod_bound_token(kube: Kube, namespace: str, account: str, pod: str) -> str:
    """A token of the ServiceAccount bound to the Pod, as kubelet requests it for the pod's volume."""
    uid = kube.core.read_namespaced_pod(pod, namespace).metadata.uid
    return kube.kubectl(
        "create", "token", account, "-n", namespace, "--duration=1h",
        "--bound-object-kind=Pod", f"--bound-object-name={pod}", f"--bound-object-uid={uid}",
    ).strip()  # fmt: skip


@contextlib.contextmanager
def agent_pod(kube: Kube, release: Release, node: str) -> Iterator[str]:
    """A Pod object of the agent's DaemonSet kind on `node` (no kubelet runs it): what the API server
    needs to issue the agent a token naming that node. Deleted at once afterwards."""
    name = unique(f"agent-{node}")[:63]
    body = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": release.namespace},
        "spec": {
            "nodeName": node,
            "serviceAccountName": release.agent,
            "containers": [{"name": "agent", "image": "bpfleet/agent:test"}],
            "terminationGracePeriodSeconds": 0,
        },
    }
    kube.core.create_namespaced_pod(release.namespace, body)
    try:
        yield name
    finally:
        # Grace period 0: with no kubelet to confirm, a graceful deletion would never end.
        with contextlib.suppress(kubernetes.client.ApiException):
            kube.core.delete_namespaced_pod(name, release.namespace, grace_period_seconds=0)


@contextlib.contextmanager
def scratch_nodes(kube: Kube, *names: str) -> Iterator[None]:
    """Node objects (no kubelet behind them), deleted afterwards with their BpfleetNodes."""
    try:
        for name in names:
            kube.core.create_node({"apiVersion": "v1", "kind": "Node", "metadata": {"name": name}})
        yield
    finally:
        for name in names:
            kube.kubectl("delete", "node", name, "--ignore-not-found", "--wait=false", check=False)
            kube.kubectl("delete", "bpfleetnodes.bpfleet.io", name, "--ignore-not-found", check=False)


def client(kubeconfig: Path) -> ApiClient:
    return kubernetes.config.new_client_from_config(config_file=str(kubeconfig))


def who_am_i(kubeconfig: Path) -> dict[str, Any]:
    """The user the API server sees for this kubeconfig (SelfSubjectReview)."""
    result = subprocess.run(
        [str(tool_path("kubectl")), "--kubeconfig", str(kubeconfig), "auth", "whoami", "-o", "json"],
        capture_output=True, text=True, check=True, timeout=60,
    )  # fmt: skip
    return json.loads(result.stdout)["status"]["userInfo"]


def wait_policies_enforced(probe: object, timeout: float = 30) -> None:
    """Admission picks new policies up from an informer: waits until `probe()` (a dry-run request
    the policies refuse) is refused."""
    wait_for("the node-binding policies to be enforced", probe, timeout=timeout, interval=0.2)
