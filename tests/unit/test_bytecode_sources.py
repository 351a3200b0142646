"""The operator's resolution of bytecode sources and of sha256 pins: what reaches a version, and
what is refused with which reason and message."""

from __future__ import annotations

import base64
import hashlib
from typing import Any

import pytest

from bpfleet_api import reasons
from bpfleet_operator.builtins import catalog
from bpfleet_operator.bytecode_sources import MAX_ELF_BYTES
from bpfleet_operator.sources import SourceError, config_map_ref, resolve
from tests.unit.bpf_elf import bpf_object

ELF = bpf_object(b"\x01\x02 program")


def spec_with(source: dict[str, Any]) -> dict[str, Any]:
    return {"source": source, "function": "f", "attach": {"type": "CgroupSkb", "direction": "Egress"}}


def binary(found: dict[str, bytes] | None):
    return lambda namespace, name: found if (namespace, name) == ("shop", "progs") else None


def no_text(namespace: str, name: str) -> None:
    return None


CONFIG_MAP = {"bytecode": {"configMapRef": {"name": "progs", "key": "prog.bpf.o"}}}


def test_a_config_map_elf_becomes_the_versions_bytecode_with_its_sha256():
    resolved = resolve("shop", spec_with(CONFIG_MAP), no_text, read_binary=binary({"prog.bpf.o": ELF}))
    assert resolved.as_spec() == {
        "bytecode": {"data": base64.b64encode(ELF).decode()},
        "sha256": hashlib.sha256(ELF).hexdigest(),
        "origin": "configMap:shop/progs/prog.bpf.o",
    }


@pytest.mark.parametrize(
    ("data", "problem"),
    [
        pytest.param(b"int f(void *ctx) { return 1; }" * 4, "is not an ELF object", id="C text"),
        pytest.param(bpf_object(machine=62), "for machine 62, not BPF (247)", id="an x86-64 object"),
        pytest.param(bpf_object(elf_type=2), "not a relocatable object", id="an executable"),
        pytest.param(b"\x7fELF", "is not an ELF object", id="truncated"),
        pytest.param(bpf_object(bytes(MAX_ELF_BYTES)), "may have at most 786432 (768 KiB)", id="too large"),
    ],
)
def test_what_is_not_a_bpf_object_is_invalid(data: bytes, problem: str):
    with pytest.raises(SourceError) as caught:
        resolve("shop", spec_with(CONFIG_MAP), no_text, read_binary=binary({"prog.bpf.o": data}))
    assert caught.value.reason == reasons.INVALID_SPEC
    assert "ConfigMap shop/progs binaryData key 'prog.bpf.o'" in str(caught.value)
    assert problem in str(caught.value)


def test_the_largest_object_is_accepted():
    largest = bpf_object(bytes(MAX_ELF_BYTES - 64))
    resolved = resolve("shop", spec_with(CONFIG_MAP), no_text, read_binary=binary({"prog.bpf.o": largest}))
    assert resolved.elf == largest


@pytest.mark.parametrize(
    ("found", "message"),
    [
        pytest.param(None, "ConfigMap shop/progs does not exist", id="no config map"),
        pytest.param({"other": ELF}, "has no binaryData key 'prog.bpf.o'", id="no key"),
    ],
)
def test_a_missing_config_map_or_key_is_source_not_found(found: dict[str, bytes] | None, message: str):
    with pytest.raises(SourceError) as caught:
        resolve("shop", spec_with(CONFIG_MAP), no_text, read_binary=binary(found))
    assert caught.value.reason == reasons.SOURCE_NOT_FOUND
    assert message in str(caught.value)


def test_an_image_is_passed_to_the_agents_with_its_pin():
    image = {"url": "quay.io/org/prog:v1", "imagePullSecret": "regcred"}
    pin = "cd" * 32
    resolved = resolve("shop", spec_with({"bytecode": {"image": image}, "sha256": pin}), no_text)
    assert resolved.as_spec() == {
        "bytecode": {
            "image": {
                "url": "quay.io/org/prog:v1",
                "pullPolicy": "IfNotPresent",
                "imagePullSecret": "regcred",
            }
        },
        "sha256": pin,
        "origin": "image:quay.io/org/prog:v1",
    }
    unpinned = resolve("shop", spec_with({"bytecode": {"image": {"url": "quay.io/o/p"}}}), no_text)
    assert "sha256" not in unpinned.as_spec() and unpinned.sha256 is None


def _sources_of_every_readable_kind() -> list[Any]:
    text = "int f(struct __sk_buff *skb) { return 1; }"
    builtin = catalog()["syscall-counter"]
    return [
        pytest.param({"inline": text}, text.encode(), id="inline"),
        pytest.param({"builtin": builtin.name}, builtin.source.encode(), id="builtin"),
        pytest.param({"configMapRef": {"name": "progs", "key": "main.c"}}, text.encode(), id="configMap C"),
        pytest.param(CONFIG_MAP, ELF, id="configMap ELF"),
    ]


@pytest.mark.parametrize(("source", "content"), _sources_of_every_readable_kind())
def test_a_pin_is_checked_on_every_kind_the_operator_reads(source: dict[str, Any], content: bytes):
    def text(namespace: str, name: str) -> dict[str, str]:
        return {"main.c": content.decode()}

    spec = spec_with(source)
    if "builtin" in source:
        spec.update(
            function="count_syscalls", attach={"type": "Tracepoint", "name": "raw_syscalls:sys_enter"}
        )
    elf = binary({"prog.bpf.o": ELF})
    right = hashlib.sha256(content).hexdigest()
    pinned = resolve("shop", {**spec, "source": {**source, "sha256": right}}, text, read_binary=elf)
    assert pinned.sha256 == right and pinned.as_spec()["sha256"] == right

    wrong = "0" * 64
    with pytest.raises(SourceError) as caught:
        resolve("shop", {**spec, "source": {**source, "sha256": wrong}}, text, read_binary=elf)
    assert caught.value.reason == reasons.SOURCE_HASH_MISMATCH
    assert str(caught.value) == f"expected sha256 {wrong}, got {right}"


def test_both_kinds_of_config_map_reference_are_found():
    assert config_map_ref(spec_with(CONFIG_MAP)) == {"name": "progs", "key": "prog.bpf.o"}
    assert config_map_ref(spec_with({"configMapRef": {"name": "c", "key": "k"}})) == {"name": "c", "key": "k"}
    assert config_map_ref(spec_with({"bytecode": {"image": {"url": "quay.io/o/p"}}})) is None
    assert config_map_ref(spec_with({"inline": "int x;"})) is None


def test_a_cluster_program_reads_bytecode_only_from_the_system_namespace():
    from bpfleet_api import names
    from bpfleet_operator import tenancy
    from bpfleet_operator.kinds import CLUSTER

    ref = {"name": "progs", "namespace": "tools", "key": "prog.bpf.o"}
    spec = {**spec_with({"bytecode": {"configMapRef": ref}}), "scope": "Node"}
    assert CLUSTER.config_map_namespace(CLUSTER.key(None, "p"), spec) == "tools"
    assert any("only from the bpfleet system namespace" in p for p in tenancy.problems(CLUSTER, spec))
    ref["namespace"] = names.system_namespace()
    assert tenancy.problems(CLUSTER, spec) == []
