"""spec.source.bytecode: an ELF read from a ConfigMap's binaryData (checked to be a relocatable BPF
object of bounded size before any node sees it), or an image reference passed to the agents."""

from __future__ import annotations

import struct
from collections.abc import Mapping
from typing import Any

from bpfleet_api import reasons
from bpfleet_operator.resolved import BinaryReader, ResolvedSource, SourceError

# The version object carries the ELF base64-encoded (4/3 larger): 768 KiB stays well inside the
# API server's object size limit, with the rest of the spec beside it.
MAX_ELF_BYTES = 768 * 1024
EM_BPF = 247
ET_REL = 1
_ELF_HEADER = 52  # the smaller (32-bit) ELF header: enough to read e_type and e_machine


def elf_problem(data: bytes) -> str | None:
    """Why `data` is not a relocatable BPF ELF object, or None when it is one."""
    if len(data) > MAX_ELF_BYTES:
        return f"it has {len(data)} bytes: a bytecode object may have at most {MAX_ELF_BYTES} (768 KiB)"
    if len(data) < _ELF_HEADER or data[:4] != b"\x7fELF":
        return (
            "it is not an ELF object (no \\x7fELF magic): build one with clang -target bpf (docs/bytecode.md)"
        )
    order = {1: "<", 2: ">"}.get(data[5])
    if order is None:
        return "its ELF header names no byte order"
    e_type, e_machine = struct.unpack_from(order + "HH", data, 16)
    if e_machine != EM_BPF:
        return f"it is an ELF object for machine {e_machine}, not BPF ({EM_BPF}): clang -target bpf"
    if e_type != ET_REL:
        return f"it is an ELF object of type {e_type}, not a relocatable object (clang -c)"
    return None


def resolve(namespace: str, bytecode: Mapping[str, Any], read_binary: BinaryReader) -> ResolvedSource:
    if "image" in bytecode:
        image = bytecode["image"]
        passed = {"url": image["url"], "pullPolicy": image.get("pullPolicy") or "IfNotPresent"}
        if image.get("imagePullSecret"):
            passed["imagePullSecret"] = image["imagePullSecret"]
        return ResolvedSource(None, f"image:{image['url']}", image=passed)
    ref = bytecode["configMapRef"]
    where = f"ConfigMap {namespace}/{ref['name']}"
    binary = read_binary(namespace, ref["name"])
    if binary is None:
        raise SourceError(reasons.SOURCE_NOT_FOUND, f"{where} does not exist")
    if ref["key"] not in binary:
        raise SourceError(
            reasons.SOURCE_NOT_FOUND,
            f"{where} has no binaryData key {ref['key']!r} (an ELF goes in binaryData)",
        )
    data = binary[ref["key"]]
    if problem := elf_problem(data):
        raise SourceError(reasons.INVALID_SPEC, f"{where} binaryData key {ref['key']!r}: {problem}")
    return ResolvedSource(None, f"configMap:{namespace}/{ref['name']}/{ref['key']}", elf=data)
