"""Pulling bpfman images from a real registry: by tag and by digest, both manifest formats, an
index per platform, the labels, the cache and its pull policies, the allowlist, the caps."""

from __future__ import annotations

import hashlib
import json
import os

import pytest

from e2e.bytecode_images import bpfman_labels
from node_agent.errors import FunctionNotFound, ImagePullFailed, RegistryNotAllowed, SourceHashMismatch
from node_agent.oci.fetch import check_sha256
from node_agent.oci.registry import DOCKER_MANIFEST, OCI_MANIFEST, Limits

pytestmark = pytest.mark.registry


def test_an_image_pulls_by_tag_and_by_digest(images, pull):
    assert pull(images.url("bpf/prog", "v1")) == images.obj.read_bytes()
    assert pull(images.url("bpf/prog", digest=images.digest), "count_ingress") == images.obj.read_bytes()
    missing = "sha256:" + "0" * 64
    with pytest.raises(ImagePullFailed, match=r"not found in the registry \(HTTP 404\)"):
        pull(images.url("bpf/prog", digest=missing))
    with pytest.raises(ImagePullFailed, match="not found"):
        pull(images.url("bpf/nothing", "v1"))


def test_a_docker_v2_manifest_pulls_like_an_oci_one(images, pull):
    obj, digest = images.push_object("bpf/docker", "v1", 7)
    images.builder.push(images.builder.build(obj, bpfman_labels()), "bpf/docker", "v2", image_format="v2s2")
    manifest = json.loads(images.registry.get_manifest("bpf/docker", "v2", DOCKER_MANIFEST))
    assert manifest["mediaType"] == DOCKER_MANIFEST
    assert (
        pull(images.url("bpf/docker", "v2"))
        == obj.read_bytes()
        == pull(images.url("bpf/docker", digest=digest))
    )


def test_an_index_gives_this_nodes_platform_or_its_only_entry(images, pull):
    objects, built = {}, {}
    for marker, arch in enumerate(("amd64", "arm64", "s390x"), start=11):
        objects[arch], _ = images.push_object("bpf/single-" + arch, "v1", marker)
        built[arch] = images.builder.build(objects[arch], bpfman_labels(), arch=arch)
    images.builder.push_index(built, "bpf/multi", "v1")
    assert pull(images.url("bpf/multi", "v1")) == objects["amd64"].read_bytes()
    images.builder.push_index({"arm64": built["arm64"], "s390x": built["s390x"]}, "bpf/foreign", "v1")
    with pytest.raises(ImagePullFailed, match="no linux/amd64 manifest among 2"):
        pull(images.url("bpf/foreign", "v1"))
    images.builder.push_index({"arm64": built["arm64"]}, "bpf/one", "v1")
    assert pull(images.url("bpf/one", "v1")) == objects["arm64"].read_bytes()  # an index of one: that one


def test_the_labels_decide_which_functions_an_image_has(images, pull):
    with pytest.raises(FunctionNotFound, match="'steal' is not among the 2 programs"):
        pull(images.url("bpf/prog", "v1"), "steal")
    legacy = {"io.ebpf.bpf_function_name": "count_egress", "io.ebpf.program_type": "cgroup_skb"}
    obj, _ = images.push_object("bpf/legacy", "v1", 3, legacy)
    assert pull(images.url("bpf/legacy", "v1")) == obj.read_bytes()
    images.push_object("bpf/plain", "v1", 4, {"org.opencontainers.image.title": "not bytecode"})
    with pytest.raises(ImagePullFailed, match="not a bpfman bytecode image"):
        pull(images.url("bpf/plain", "v1"))


def test_the_sha256_pin_covers_the_object(images, pull):
    elf = pull(images.url("bpf/prog", "v1"))
    check_sha256(elf, hashlib.sha256(images.obj.read_bytes()).hexdigest())
    check_sha256(elf, None)
    wrong = "f" * 64
    with pytest.raises(
        SourceHashMismatch, match=f"expected sha256 {wrong}, got {hashlib.sha256(elf).hexdigest()}"
    ):
        check_sha256(elf, wrong)


def test_if_not_present_reuses_a_resolved_tag_and_always_resolves_again(images, pull, tmp_path):
    first, _ = images.push_object("bpf/moving", "v1", 21)
    assert pull(images.url("bpf/moving", "v1")) == first.read_bytes()
    second, _ = images.push_object("bpf/moving", "v1", 22)  # the tag moves
    assert pull(images.url("bpf/moving", "v1")) == first.read_bytes()
    assert pull(images.url("bpf/moving", "v1"), pull_policy="Always") == second.read_bytes()
    assert pull(images.url("bpf/moving", "v1")) == second.read_bytes()  # Always updated the tag
    # A damaged cache entry is pulled again, never served.
    for path in (tmp_path / "cache" / "objects").iterdir():
        path.write_bytes(b"\x7fELF damaged")
    assert pull(images.url("bpf/moving", "v1")) == second.read_bytes()
    # IfNotPresent needs no registry once cached: with the image deleted there, it still runs;
    # Always asks again and finds nothing.
    digest = (
        "sha256:" + hashlib.sha256(images.registry.get_manifest("bpf/moving", "v1", OCI_MANIFEST)).hexdigest()
    )
    status, _, _ = images.registry.request("DELETE", f"/v2/bpf/moving/manifests/{digest}")
    assert status == 202
    assert pull(images.url("bpf/moving", "v1")) == second.read_bytes()
    with pytest.raises(ImagePullFailed, match="not found"):
        pull(images.url("bpf/moving", "v1"), pull_policy="Always")


def test_pulling_a_cached_image_again_writes_nothing_to_the_cache(images, pull, tmp_path):
    images.push_object("bpf/steady", "v1", 31)
    pull(images.url("bpf/steady", "v1"), pull_policy="Always")
    files = sorted(p for p in (tmp_path / "cache").rglob("*") if p.is_file())
    written = {p: p.stat().st_mtime_ns for p in files}

    pull(images.url("bpf/steady", "v1"), pull_policy="Always")  # asks the registry, as Always does

    assert sorted(p for p in (tmp_path / "cache").rglob("*") if p.is_file()) == files
    assert {p: p.stat().st_mtime_ns for p in files} == written


def test_namespaced_programs_pull_only_from_allowed_registries(images, pull):
    url = images.url("bpf/prog", "v1")
    with pytest.raises(
        RegistryNotAllowed, match=rf"registry {images.registry.host} is not in .* \(allowed: none\)"
    ):
        pull(url, cluster=False)
    with pytest.raises(RegistryNotAllowed, match=r"allowed: quay.io"):
        pull(url, cluster=False, allowed_registries=("quay.io",))
    assert (
        pull(url, cluster=False, allowed_registries=("quay.io", images.registry.host))
        == images.obj.read_bytes()
    )
    assert pull(url, cluster=True) == images.obj.read_bytes()  # a ClusterEbpfProgram: any registry


def test_a_huge_layer_is_refused(images, pull):
    config = json.dumps({"config": {"Labels": bpfman_labels()}}).encode()
    big = os.urandom(3 << 20)
    registry = images.registry
    config_digest, layer_digest = registry.push_blob("bpf/huge", config), registry.push_blob("bpf/huge", big)
    for tag, claimed in (("honest", len(big)), ("lying", 512)):
        manifest = {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": config_digest,
                "size": len(config),
            },
            "layers": [
                {
                    "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                    "digest": layer_digest,
                    "size": claimed,
                }
            ],
        }
        registry.push_manifest("bpf/huge", tag, json.dumps(manifest).encode(), OCI_MANIFEST)
    limits = Limits(blob_bytes=1 << 20)
    with pytest.raises(ImagePullFailed, match="is 3145728 bytes, over the 1048576-byte limit"):
        pull(images.url("bpf/huge", "honest"), limits=limits)
    # The descriptor lies: the registry's length (or the stream) still stops it at the cap.
    with pytest.raises(ImagePullFailed, match="over the 1048576-byte limit"):
        pull(images.url("bpf/huge", "lying"), limits=limits)
