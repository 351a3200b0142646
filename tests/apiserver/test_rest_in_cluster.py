"""The thin client configured as in a pod (KUBERNETES_SERVICE_HOST/PORT, the ServiceAccount's token
and CA files) against the real API server: it authenticates as that ServiceAccount, verifies the
server against the CA, and follows the token file when kubelet rotates it."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlparse

import pytest
import yaml

from bpfleet_api import kubeconfig
from bpfleet_api.rest import RestClient
from e2e.controlplane import ControlPlane
from e2e.kube import Kube, scratch_namespace

pytestmark = pytest.mark.apiserver

REVIEW = "/apis/authentication.k8s.io/v1/selfsubjectreviews"


@pytest.fixture
def namespace(crds: Kube) -> Iterator[str]:
    with scratch_namespace(crds, "incluster") as name:
        yield name


def _who(api: RestClient) -> str:
    body = {"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"}
    return str(api.create(REVIEW, body)["status"]["userInfo"]["username"])


def test_in_a_pod_the_service_account_token_is_used_and_followed_when_it_rotates(
    kube: Kube, control_plane: ControlPlane, namespace: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    for account in ("first", "second"):
        kube.kubectl("create", "serviceaccount", account, "-n", namespace)
    admin = yaml.safe_load(kube.kubeconfig.read_text())
    ca = base64.b64decode(admin["clusters"][0]["cluster"]["certificate-authority-data"])
    (tmp_path / "ca.crt").write_bytes(ca)
    token = tmp_path / "token"
    token.write_text(kube.kubectl("create", "token", "first", "-n", namespace).strip())
    server = urlparse(control_plane.server_url)
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", server.hostname or "127.0.0.1")
    monkeypatch.setenv("KUBERNETES_SERVICE_PORT", str(server.port))

    api = RestClient(kubeconfig.in_cluster(tmp_path))
    assert _who(api) == f"system:serviceaccount:{namespace}:first"
    # kubelet writes the new token beside the old and swaps it in: the next request uses it.
    fresh = tmp_path / "token.new"
    fresh.write_text(kube.kubectl("create", "token", "second", "-n", namespace).strip())
    fresh.replace(token)
    assert _who(api) == f"system:serviceaccount:{namespace}:second"
