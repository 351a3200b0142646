"""Pulls from a registry behind htpasswd basic auth, with credentials from a
kubernetes.io/dockerconfigjson Secret of the program's namespace."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from e2e import cosign
from e2e.bytecode_images import ImageBuilder, bpfman_labels, build_object
from e2e.registry import LocalRegistry, User
from node_agent.errors import ImagePullFailed

pytestmark = pytest.mark.registry
USER = User("tenant", "correct-horse")


@pytest.fixture(scope="module")
def private(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LocalRegistry, Path, str]]:
    workdir = tmp_path_factory.mktemp("private")
    with LocalRegistry(USER) as registry:
        builder = ImageBuilder(workdir, registry)
        try:
            obj = build_object(workdir, "private", 41)
            digest = builder.push(builder.build(obj, bpfman_labels()), "team/prog", "v1")
            yield registry, obj, digest
        finally:
            builder.close()


def test_a_dockerconfigjson_secret_opens_a_private_registry(private, pull, keys, tmp_path):
    registry, obj, digest = private
    url = f"{registry.host}/team/prog:v1"
    asked: list[tuple[str, str]] = []

    def read_secret(namespace: str, name: str) -> dict[str, bytes] | None:
        asked.append((namespace, name))
        return {".dockerconfigjson": USER.dockerconfigjson(registry.host)} if name == "regcred" else None

    assert pull(url, secret="regcred", read_secret=read_secret) == obj.read_bytes()
    assert asked == [("tenant-a", "regcred")]  # the program's own namespace
    # Signatures stored in the private registry are read with the same credentials.
    good, _ = keys
    cosign.sign(
        good, f"{registry.host}/team/prog@{digest}", tmp_path, USER.dockerconfigjson(registry.host).decode()
    )
    policy = {"public_keys": (good.public_pem(),), "require_signatures": True}
    assert (
        pull(url, secret="regcred", read_secret=read_secret, cache_dir=tmp_path / "s", **policy)
        == obj.read_bytes()
    )


def test_no_wrong_or_missing_credentials_are_refused(private, pull):
    registry, _, _ = private
    url = f"{registry.host}/team/prog:v1"
    with pytest.raises(ImagePullFailed, match=r"requires credentials \(set imagePullSecret\)"):
        pull(url)
    with pytest.raises(ImagePullFailed, match="image pull secret tenant-a/gone not found"):
        pull(url, secret="gone")
    wrong = User(USER.name, "guess").dockerconfigjson(registry.host)
    with pytest.raises(ImagePullFailed, match=r"refused the credentials \(HTTP 401\)") as info:
        pull(url, secret="regcred", read_secret=lambda _ns, _n: {".dockerconfigjson": wrong})
    assert "guess" not in str(info.value)
    other_host = User(USER.name, USER.password).dockerconfigjson("quay.io")
    with pytest.raises(ImagePullFailed, match="requires credentials"):
        pull(url, secret="regcred", read_secret=lambda _ns, _n: {".dockerconfigjson": other_host})


def test_a_private_image_in_the_cache_is_not_served_to_a_pull_without_its_credentials(
    private, pull, tmp_path
):
    registry, obj, digest = private
    shared = tmp_path / "node-cache"  # one node: both tenants' programs share its cache
    secret = {".dockerconfigjson": USER.dockerconfigjson(registry.host)}
    by_tag, by_digest = f"{registry.host}/team/prog:v1", f"{registry.host}/team/prog@{digest}"
    assert (
        pull(by_tag, secret="regcred", read_secret=lambda _ns, _n: secret, cache_dir=shared)
        == obj.read_bytes()
    )
    for url in (by_tag, by_digest):
        with pytest.raises(ImagePullFailed, match="requires credentials"):
            pull(url, cache_dir=shared)
    wrong = {".dockerconfigjson": User(USER.name, "guess").dockerconfigjson(registry.host)}
    with pytest.raises(ImagePullFailed, match="refused the credentials"):
        pull(by_digest, secret="other", read_secret=lambda _ns, _n: wrong, cache_dir=shared)
    # The same credentials are served from the cache, even with the registry's copy gone.
    status, _, _ = registry.request("DELETE", f"/v2/team/prog/manifests/{digest}")
    assert status == 202
    assert (
        pull(by_tag, secret="regcred", read_secret=lambda _ns, _n: secret, cache_dir=shared)
        == obj.read_bytes()
    )
