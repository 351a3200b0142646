"""fetch_image's checks that come before any network: the version's image shape, the pull policy,
the allowlist, signatures required without a key, and the sha256 pin."""

from __future__ import annotations

import hashlib

import pytest

from node_agent.errors import (
    ImagePullFailed,
    InvalidSpec,
    RegistryNotAllowed,
    SignatureInvalid,
    SourceHashMismatch,
)
from node_agent.oci.fetch import BytecodePolicy, ImageSource, check_sha256, fetch_image, image_source


def no_secret(_namespace: str, _name: str) -> None:
    raise AssertionError("no secret is read before the policy checks")


def fetch(
    url: str, policy: BytecodePolicy, *, cluster: bool = False, pull_policy: str = "IfNotPresent"
) -> bytes:
    return fetch_image(
        ImageSource(url, pull_policy, "regcred"),
        namespace="tenant",
        cluster=cluster,
        policy=policy,
        read_secret=no_secret,
        function="f",
    )


def test_the_versions_image_shape_is_read_strictly():
    assert image_source({"url": "quay.io/a/b:v1"}) == ImageSource("quay.io/a/b:v1", "IfNotPresent", None)
    assert image_source({"url": "q.io/a", "pullPolicy": "Always", "imagePullSecret": "s"}) == ImageSource(
        "q.io/a", "Always", "s"
    )
    for bad in (
        {},
        {"url": 3},
        {"url": "q.io/a", "pullPolicy": "Never"},
        {"url": "q.io/a", "imagePullSecret": 1},
    ):
        with pytest.raises(InvalidSpec):
            image_source(bad)


def test_refusals_that_need_no_registry(tmp_path):
    policy = BytecodePolicy(cache_dir=tmp_path)
    with pytest.raises(RegistryNotAllowed, match=r"registry quay.io is not in .* \(allowed: none\)"):
        fetch("quay.io/a/b:v1", policy)
    with pytest.raises(RegistryNotAllowed, match=r"registry docker\.io"):
        fetch(
            "library/busybox",
            BytecodePolicy(cache_dir=tmp_path, allowed_registries=("registry-1.docker.io",)),
        )
    with pytest.raises(SignatureInvalid, match="no public key configured"):
        fetch("quay.io/a/b:v1", BytecodePolicy(cache_dir=tmp_path, require_signatures=True), cluster=True)
    with pytest.raises(ImagePullFailed, match="pullPolicy must be one of"):
        fetch("quay.io/a/b:v1", policy, cluster=True, pull_policy="Never")
    with pytest.raises(ImagePullFailed, match="scheme"):
        fetch("https://quay.io/a/b:v1", policy, cluster=True)
    assert not any(tmp_path.iterdir())  # nothing cached, nothing created


def test_the_sha256_pin_says_expected_and_got():
    data = b"\x7fELF..."
    got = hashlib.sha256(data).hexdigest()
    check_sha256(data, got)
    check_sha256(data, got.upper())
    check_sha256(data, None)
    with pytest.raises(SourceHashMismatch, match=f"expected sha256 {'0' * 64}, got {got}"):
        check_sha256(data, "0" * 64)
