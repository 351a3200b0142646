"""Acceptance: the API server accepts bytecode sources and sha256 pins on both program kinds, and
refuses each malformed one with a message that names the problem; the version CRD holds text or
bytecode, never both."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from kubernetes.client.exceptions import ApiException

from bpfleet_api import names, versions
from e2e.kube import Kube
from tests.apiserver.dry_run import CLUSTER_VALID, TENANT_VALID, assert_accepted, assert_refused, spec_variant

pytestmark = pytest.mark.apiserver

DIGEST = "ab" * 32
KINDS = pytest.mark.parametrize(
    "base", [TENANT_VALID, CLUSTER_VALID], ids=["EbpfProgram", "ClusterEbpfProgram"]
)


def _config_map_ref(base: dict[str, Any]) -> dict[str, str]:
    ref = {"name": "probes", "key": "prog.bpf.o"}
    if base["kind"] == "ClusterEbpfProgram":
        ref["namespace"] = "bpfleet-system"
    return ref


def _image(**fields: Any) -> dict[str, Any]:
    return {"bytecode": {"image": fields}}


@KINDS
@pytest.mark.parametrize(
    "source",
    [
        pytest.param(_image(url="quay.io/org/prog:v1"), id="image with a tag"),
        pytest.param(_image(url="localhost:5000/prog"), id="local registry, no tag"),
        pytest.param(_image(url="registry:5000/team/prog/sub:1.0-rc_2"), id="host:port, nested repository"),
        pytest.param(_image(url=f"ghcr.io/org/prog:v1@sha256:{DIGEST}"), id="tag and digest"),
        pytest.param(_image(url=f"ghcr.io/org/prog@sha256:{DIGEST}"), id="digest only"),
        pytest.param(
            _image(url="quay.io/org/prog:v1", pullPolicy="Always", imagePullSecret="regcred.v2"),
            id="pull policy and secret",
        ),
        pytest.param({"builtin": "egress-port-deny", "sha256": DIGEST}, id="a builtin pinned"),
        pytest.param({"inline": "int x;", "sha256": DIGEST}, id="inline pinned"),
    ],
)
def test_bytecode_sources_and_pins_are_accepted(crds: Kube, base: dict[str, Any], source: dict[str, Any]):
    assert_accepted(crds, spec_variant(base, source=source))


@KINDS
def test_a_config_map_bytecode_source_is_accepted(crds: Kube, base: dict[str, Any]):
    source = {"bytecode": {"configMapRef": _config_map_ref(base)}, "sha256": DIGEST}
    assert_accepted(crds, spec_variant(base, source=source))


CONFIG_MAP = {"name": "probes", "key": "prog.bpf.o"}  # each kind's own reference in its place
URL_MESSAGE = "image.url must be an image reference registry/repository[:tag][@sha256:<64 hex digits>]"


@KINDS
@pytest.mark.parametrize(
    ("source", "message"),
    [
        pytest.param(
            {"builtin": "egress-port-deny", "bytecode": {"image": {"url": "quay.io/o/p"}}},
            "source must set exactly one of builtin, inline, configMapRef or bytecode",
            id="bytecode and a builtin",
        ),
        pytest.param(
            {"sha256": DIGEST},
            "source must set exactly one of builtin, inline, configMapRef or bytecode",
            id="a pin alone",
        ),
        pytest.param(
            {"bytecode": {}},
            "source.bytecode must set exactly one of image or configMapRef",
            id="empty bytecode",
        ),
        pytest.param(
            {"bytecode": {"image": {"url": "quay.io/o/p"}, "configMapRef": CONFIG_MAP}},
            "source.bytecode must set exactly one of image or configMapRef",
            id="image and config map",
        ),
        pytest.param(_image(url="prog"), URL_MESSAGE, id="no registry"),
        pytest.param(_image(url="org/prog:v1"), URL_MESSAGE, id="registry not named"),
        pytest.param(_image(url="quay.io/Org/prog"), URL_MESSAGE, id="uppercase repository"),
        pytest.param(_image(url="quay.io/org/prog:v1;rm -rf"), URL_MESSAGE, id="junk in the tag"),
        pytest.param(_image(url="https://quay.io/org/prog"), URL_MESSAGE, id="a scheme"),
        pytest.param(_image(url="quay.io/org/prog@sha256:abc"), URL_MESSAGE, id="short digest"),
        pytest.param(_image(url="quay.io/org/prog:" + "t" * 129), URL_MESSAGE, id="tag too long"),
        pytest.param(
            _image(url="quay.io/" + "a" * 520),
            "spec.source.bytecode.image.url: Too long: may not be",
            id="url too long",
        ),
        pytest.param(
            _image(pullPolicy="Always"), "spec.source.bytecode.image.url: Required value", id="no url"
        ),
        pytest.param(
            _image(url="quay.io/o/p", pullPolicy="Never"),
            'spec.source.bytecode.image.pullPolicy: Unsupported value: "Never"',
            id="unknown pull policy",
        ),
        pytest.param(
            _image(url="quay.io/o/p", imagePullSecret="Reg Cred"),
            "image.imagePullSecret must be a Secret name",
            id="bad secret name",
        ),
        pytest.param(
            {"inline": "int x;", "sha256": DIGEST.upper()},
            "source.sha256 must be 64 lowercase hex digits",
            id="uppercase sha256",
        ),
        pytest.param(
            {"inline": "int x;", "sha256": "ab" * 31},
            "source.sha256 must be 64 lowercase hex digits",
            id="short sha256",
        ),
    ],
)
def test_malformed_bytecode_sources_are_refused(
    crds: Kube, base: dict[str, Any], source: dict[str, Any], message: str
):
    bytecode = source.get("bytecode") or {}
    if bytecode.get("configMapRef") is CONFIG_MAP:
        source = {"bytecode": {**bytecode, "configMapRef": _config_map_ref(base)}}
    assert_refused(crds, spec_variant(base, source=source), message)


def test_a_cluster_programs_config_map_bytecode_names_its_namespace(crds: Kube):
    source = {"bytecode": {"configMapRef": {"name": "probes", "key": "prog.bpf.o"}}}
    assert_refused(
        crds,
        spec_variant(CLUSTER_VALID, source=source),
        "spec.source.bytecode.configMapRef.namespace: Required value",
    )


RUN = uuid.uuid4().hex[:6]


def _version(source: dict[str, Any]) -> dict[str, Any]:
    spec = versions.with_hash(
        {
            "programKind": names.PROGRAM_KIND,
            "programName": "counter",
            "source": source,
            "function": "f",
            "attach": {"type": "CgroupSkb", "direction": "Egress"},
            "podSelector": {},
        }
    )
    return {
        "apiVersion": names.API_VERSION,
        "kind": names.VERSION_KIND,
        "metadata": {"name": f"counter-{RUN}-{spec['contentHash'][:8]}"},
        "spec": spec,
    }


def _create_version(crds: Kube, source: dict[str, Any]) -> None:
    crds.custom.create_namespaced_custom_object(
        names.GROUP, names.VERSION, "default", names.VERSION_PLURAL, _version(source), dry_run="All"
    )


@pytest.mark.parametrize(
    "source",
    [
        pytest.param({"text": "int f;", "sha256": DIGEST, "origin": "inline"}, id="text"),
        pytest.param(
            {"bytecode": {"data": "f0VMRgIBAQ=="}, "sha256": DIGEST, "origin": "configMap:a/b/c"},
            id="elf data",
        ),
        pytest.param(
            # '+' and '/': the standard alphabet, which an ELF's base64 has (format: byte did not
            # pass it to CEL).
            {"bytecode": {"data": "f0VMRvv/v/7v"}, "sha256": DIGEST, "origin": "configMap:a/b/c"},
            id="elf data with + and /",
        ),
        pytest.param(
            {
                "bytecode": {"image": {"url": "quay.io/o/p:v1", "pullPolicy": "Always"}},
                "origin": "image:quay.io/o/p:v1",
            },
            id="image, not pinned",
        ),
    ],
)
def test_a_version_holds_text_or_bytecode(crds: Kube, source: dict[str, Any]):
    _create_version(crds, source)


@pytest.mark.parametrize(
    ("source", "message"),
    [
        pytest.param(
            {"text": "int f;", "bytecode": {"data": "f0VMRg=="}, "sha256": DIGEST},
            "source holds exactly one of text or bytecode",
            id="both",
        ),
        pytest.param({"sha256": DIGEST}, "source holds exactly one of text or bytecode", id="neither"),
        pytest.param(
            {"bytecode": {"data": "f0VMRg==", "image": {"url": "quay.io/o/p"}}, "sha256": DIGEST},
            "source.bytecode holds exactly one of data or image",
            id="data and image",
        ),
        pytest.param(
            {"bytecode": {"data": "f0VMRg=="}}, "source.sha256 is required", id="data without its sha256"
        ),
        pytest.param({"text": "int f;"}, "source.sha256 is required", id="text without its sha256"),
        pytest.param(
            {"bytecode": {"data": "not base64!"}, "sha256": DIGEST},
            "spec.source.bytecode.data",
            id="not base64",
        ),
    ],
)
def test_a_malformed_version_source_is_refused(crds: Kube, source: dict[str, Any], message: str):
    with pytest.raises(ApiException) as refused:
        _create_version(crds, source)
    assert refused.value.status == 422
    assert message in refused.value.body
