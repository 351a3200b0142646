"""Image pull secrets, read by the agent from a real API server with its own ServiceAccount's
token: only where the chart grants it (agent.bytecode.pullSecrets), by name only, only
kubernetes.io/dockerconfigjson Secrets; then used against a registry behind htpasswd."""

from __future__ import annotations

import base64
import json
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from bpfleet_api.rest import RestClient
from e2e.bytecode_images import ImageBuilder, bpfman_labels, build_object
from e2e.kube import Kube
from e2e.registry import LocalRegistry, User
from node_agent.errors import ImagePullFailed
from node_agent.oci.fetch import BytecodePolicy, ImageSource, fetch_image
from node_agent.oci.secrets import secret_reader
from tests.apiserver.chart import (
    Release,
    can_i,
    installed_release,
    scratch_namespace,
    token_kubeconfig,
    unbound_token,
)

pytestmark = pytest.mark.apiserver
USER = User("tenant", "pull-only")


@pytest.fixture(scope="module")
def granted(crds: Kube, helm_home: Path) -> Iterator[Release]:
    with (
        scratch_namespace(crds, "pullsec") as name,
        installed_release(crds, name, helm_home, "--set", "agent.bytecode.pullSecrets=true") as release,
    ):
        yield release


def agent_client(kube: Kube, release: Release, path: Path) -> RestClient:
    token = unbound_token(kube, release.namespace, release.agent)
    return RestClient.load(str(token_kubeconfig(kube, token, path)))


def put_secret(kube: Kube, namespace: str, name: str, kind: str, data: dict[str, bytes]) -> None:
    body = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name, "namespace": namespace},
        "type": kind,
        "data": {k: base64.b64encode(v).decode() for k, v in data.items()},
    }
    kube.kubectl("apply", "-f", "-", input=json.dumps(body))


def test_the_grant_is_get_by_name_only(crds: Kube, granted: Release):
    assert can_i(crds, granted.agent_user, "get", "secrets", "-n", "x")
    assert not can_i(crds, granted.agent_user, "list", "secrets", "-n", "x")
    assert not can_i(crds, granted.agent_user, "watch", "secrets", "-A")
    assert not can_i(crds, granted.agent_user, "patch", "secrets", "-n", "x")


def test_the_agent_reads_a_pull_secret_and_pulls_with_it(crds: Kube, granted: Release, tmp_path: Path):
    read = secret_reader(agent_client(crds, granted, tmp_path / "agent.kubeconfig"))
    with scratch_namespace(crds, "tenant") as tenant, LocalRegistry(USER) as registry:
        put_secret(crds, tenant, "regcred", "kubernetes.io/dockerconfigjson", {
            ".dockerconfigjson": USER.dockerconfigjson(registry.host)
        })  # fmt: skip
        put_secret(
            crds, tenant, "opaque", "Opaque", {".dockerconfigjson": USER.dockerconfigjson(registry.host)}
        )
        assert read(tenant, "missing") is None
        with pytest.raises(ImagePullFailed, match=r"is not of type kubernetes\.io/dockerconfigjson"):
            read(tenant, "opaque")
        builder = ImageBuilder(tmp_path, registry)
        try:
            obj = build_object(tmp_path, "secret", 51)
            builder.push(builder.build(obj, bpfman_labels()), "team/prog", "v1")
        finally:
            builder.close()
        elf = fetch_image(
            ImageSource(f"{registry.host}/team/prog:v1", "IfNotPresent", "regcred"),
            namespace=tenant,
            cluster=False,
            policy=BytecodePolicy(allowed_registries=(registry.host,), cache_dir=tmp_path / "cache"),
            read_secret=read,
            function="count_egress",
        )
        assert elf == obj.read_bytes()


def test_without_the_grant_the_agent_cannot_read_secrets(crds: Kube, helm_home: Path):
    with (
        scratch_namespace(crds, "nogrant") as name,
        installed_release(crds, name, helm_home) as release,
        tempfile.TemporaryDirectory() as tmp,
    ):
        put_secret(crds, name, "regcred", "kubernetes.io/dockerconfigjson", {".dockerconfigjson": b"{}"})
        read = secret_reader(agent_client(crds, release, Path(tmp) / "agent.kubeconfig"))
        with pytest.raises(ImagePullFailed, match=r"may not read image pull secrets \(chart value"):
            read(name, "regcred")
