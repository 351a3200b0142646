"""OCI reference parsing: what the agent pulls is exactly what the URL names."""

from __future__ import annotations

import pytest

from node_agent.errors import ImagePullFailed
from node_agent.oci.reference import InvalidReference, Reference, is_loopback, parse

DIGEST = "sha256:" + "ab" * 32


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("quay.io/org/prog:v1", Reference("quay.io", "org/prog", "v1")),
        ("quay.io/org/prog", Reference("quay.io", "org/prog", "latest")),
        (f"quay.io/org/prog@{DIGEST}", Reference("quay.io", "org/prog", None, DIGEST)),
        (f"quay.io/org/prog:v1@{DIGEST}", Reference("quay.io", "org/prog", "v1", DIGEST)),
        ("127.0.0.1:5000/a/b/c:x.y-z", Reference("127.0.0.1:5000", "a/b/c", "x.y-z")),
        ("localhost/prog:1", Reference("localhost", "prog", "1")),
        ("[::1]:5000/prog:1", Reference("[::1]:5000", "prog", "1")),
        ("bpfman/xdp-pass:latest", Reference("docker.io", "bpfman/xdp-pass", "latest")),
        ("busybox", Reference("docker.io", "library/busybox", "latest")),
    ],
)
def test_references_parse_with_docker_hub_defaults(url, expected):
    assert parse(url) == expected


def test_the_digest_wins_over_the_tag_and_docker_hub_uses_its_api_host():
    ref = parse(f"quay.io/org/prog:v1@{DIGEST}")
    assert ref.manifest_ref == DIGEST
    assert parse("org/prog").api_host == "registry-1.docker.io"
    assert parse("127.0.0.1:5000/p").hostname == "127.0.0.1"
    assert parse("[::1]:5000/p").hostname == "::1"


@pytest.mark.parametrize(
    ("url", "words"),
    [
        ("", "1 to"),
        ("https://quay.io/org/prog", "scheme"),
        ("quay.io/Org/prog", "repository"),
        ("quay.io/org/prog:", "tag"),
        ("quay.io/org/prog:-bad", "tag"),
        ("quay.io/org/prog@sha256:abc", "digest"),
        ("quay.io/org/prog@md5:" + "0" * 32, "digest"),
        ("quay.io/org/prog with space", "whitespace"),
        ("quay.io/org/pr\u00f6g", "non-ASCII"),
        ("bad_host:99999999/prog", "registry"),
        ("quay.io//prog", "repository"),
        ("q" * 2000, "1 to"),
    ],
)
def test_bad_references_are_refused_with_what_is_wrong(url, words):
    with pytest.raises(InvalidReference, match=words) as info:
        parse(url)
    assert isinstance(info.value, ImagePullFailed)


def test_loopback_is_only_the_local_host():
    assert (
        is_loopback("127.0.0.1")
        and is_loopback("127.1.2.3")
        and is_loopback("localhost")
        and is_loopback("::1")
    )
    assert not is_loopback("127.0.0.1.example.com") and not is_loopback("10.0.0.1")
