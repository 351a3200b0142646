"""cosign signatures, made by the real cosign, checked by the agent: signed images verify; unsigned,
re-pushed, moved-signature and wrong-key images are refused with SignatureInvalid."""

from __future__ import annotations

import json

import pytest

from e2e import cosign
from node_agent.errors import SignatureInvalid
from node_agent.oci.cosign import signature_tag
from node_agent.oci.registry import OCI_MANIFEST

pytestmark = pytest.mark.registry


def test_a_signed_image_verifies_against_its_key(images, keys, pull, tmp_path):
    good, other = keys
    obj, digest = images.push_object("bpf/signed", "v1", 31)
    cosign.sign(good, images.url("bpf/signed", digest=digest), tmp_path)
    policy = {"public_keys": (good.public_pem(),), "require_signatures": True}
    assert pull(images.url("bpf/signed", "v1"), **policy) == obj.read_bytes()
    # Either configured key may have signed it.
    both = {"public_keys": (other.public_pem(), good.public_pem()), "require_signatures": True}
    assert (
        pull(images.url("bpf/signed", digest=digest), cache_dir=tmp_path / "c2", **both) == obj.read_bytes()
    )


def test_a_wrong_key_is_refused(images, keys, pull, tmp_path):
    good, other = keys
    _, digest = images.push_object("bpf/wrongkey", "v1", 32)
    cosign.sign(other, images.url("bpf/wrongkey", digest=digest), tmp_path)
    with pytest.raises(SignatureInvalid, match=rf"no signature of image {digest} verifies .* 1 configured"):
        pull(images.url("bpf/wrongkey", "v1"), public_keys=(good.public_pem(),), require_signatures=True)
    # Present but not verifying is refused even where signatures are optional.
    with pytest.raises(SignatureInvalid):
        pull(images.url("bpf/wrongkey", "v1"), public_keys=(good.public_pem(),))


def test_unsigned_images_are_refused_only_where_signatures_are_required(images, keys, pull):
    good, _ = keys
    url = images.url("bpf/prog", "v1")
    with pytest.raises(SignatureInvalid, match=rf"image {images.digest} is unsigned.*only images signed"):
        pull(url, public_keys=(good.public_pem(),), require_signatures=True)
    assert pull(url, public_keys=(good.public_pem(),)) == images.obj.read_bytes()
    assert pull(url) == images.obj.read_bytes()
    with pytest.raises(SignatureInvalid, match="no public key configured"):
        pull(url, require_signatures=True)


def test_a_re_pushed_tag_and_a_moved_signature_are_refused(images, keys, pull, tmp_path):
    good, _ = keys
    policy = {"public_keys": (good.public_pem(),), "require_signatures": True}
    _, signed = images.push_object("bpf/tampered", "v1", 33)
    cosign.sign(good, images.url("bpf/tampered", digest=signed), tmp_path)
    pull(images.url("bpf/tampered", "v1"), cache_dir=tmp_path / "first", **policy)
    # An attacker with push rights replaces the image under the tag: the new digest is unsigned.
    _, evil = images.push_object("bpf/tampered", "v1", 34)
    with pytest.raises(SignatureInvalid, match=f"image {evil} is unsigned"):
        pull(images.url("bpf/tampered", "v1"), pull_policy="Always", **policy)
    # ... and copies the good signature onto it: the payload still names the signed digest.
    sig = images.registry.get_manifest("bpf/tampered", signature_tag(signed), OCI_MANIFEST)
    images.registry.push_manifest("bpf/tampered", signature_tag(evil), sig, OCI_MANIFEST)
    with pytest.raises(SignatureInvalid, match=f"no signature of image {evil} verifies"):
        pull(images.url("bpf/tampered", "v1"), pull_policy="Always", **policy)
    # ... or edits the signature's annotation: it no longer verifies.
    body = json.loads(sig)
    body["layers"][0]["annotations"]["dev.cosignproject.cosign/signature"] = "MEUCIQ" + "A" * 90
    images.registry.push_manifest(
        "bpf/tampered", signature_tag(signed), json.dumps(body).encode(), OCI_MANIFEST
    )
    with pytest.raises(SignatureInvalid, match=f"no signature of image {signed} verifies"):
        pull(images.url("bpf/tampered", digest=signed), **policy)


def test_a_cached_image_is_verified_again_under_a_new_key_set(images, keys, pull, tmp_path):
    good, other = keys
    _, digest = images.push_object("bpf/rekey", "v1", 35)
    cosign.sign(good, images.url("bpf/rekey", digest=digest), tmp_path)
    pull(images.url("bpf/rekey", "v1"), public_keys=(good.public_pem(),), require_signatures=True)
    with pytest.raises(SignatureInvalid):
        pull(images.url("bpf/rekey", "v1"), public_keys=(other.public_pem(),), require_signatures=True)


def test_a_signed_index_verifies(images, keys, pull, tmp_path):
    good, _ = keys
    obj, _ = images.push_object("bpf/signed-index-src", "v1", 36)
    index = images.builder.push_index(
        {
            "amd64": images.builder.build(
                obj, {"io.ebpf.programs": json.dumps({"count_egress": "cgroup_skb"})}
            )
        },
        "bpf/signed-index",
        "v1",
    )
    cosign.sign(good, images.url("bpf/signed-index", digest=index), tmp_path)
    assert (
        pull(images.url("bpf/signed-index", "v1"), public_keys=(good.public_pem(),), require_signatures=True)
        == obj.read_bytes()
    )
