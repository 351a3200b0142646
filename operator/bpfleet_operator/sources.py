"""Resolves spec.source to what the nodes build, whatever its kind: C text they compile, or
bytecode (an ELF read here from a ConfigMap, or an image the agents pull)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from bpfleet_api import reasons
from bpfleet_operator import bytecode_sources
from bpfleet_operator.builtins import catalog
from bpfleet_operator.resolved import (
    BinaryReader,
    ConfigMapReader,
    ResolvedSource,
    SourceError,
    no_binary,
)

__all__ = ["BinaryReader", "ConfigMapReader", "ResolvedSource", "SourceError", "config_map_ref", "resolve"]

# A version object's spec.source.text holds at most this (the CRD's maxLength): a longer ConfigMap
# source is refused here, with a message, rather than by the API server on the version's create.
MAX_SOURCE_CHARS = 65536


def config_map_ref(spec: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """The ConfigMap reference of either kind of source (C or bytecode), if the source has one."""
    source = spec.get("source") or {}
    return source.get("configMapRef") or (source.get("bytecode") or {}).get("configMapRef")


def check_pin(spec: Mapping[str, Any], resolved: ResolvedSource) -> ResolvedSource:
    """spec.source.sha256, when set, must be the content's: a mismatch never reaches the nodes."""
    expected = (spec.get("source") or {}).get("sha256")
    if expected is None:
        return resolved
    if resolved.image is not None:
        return ResolvedSource(None, resolved.origin, image=resolved.image, pinned=expected)
    if resolved.sha256 != expected:
        raise SourceError(reasons.SOURCE_HASH_MISMATCH, f"expected sha256 {expected}, got {resolved.sha256}")
    return resolved


def resolve(
    namespace: str,
    spec: dict[str, Any],
    read_config_map: ConfigMapReader,
    *,
    origin_namespace: bool = False,
    read_binary: BinaryReader = no_binary,
) -> ResolvedSource:
    """`namespace`: where a configMapRef is read; `origin_namespace`: name it in the origin (a
    ClusterEbpfProgram's reference names its namespace, an EbpfProgram's is its own)."""
    source = spec["source"]
    if "bytecode" in source:
        return check_pin(spec, bytecode_sources.resolve(namespace, source["bytecode"], read_binary))
    return check_pin(spec, _resolve_c(namespace, spec, read_config_map, origin_namespace))


def _resolve_c(
    namespace: str, spec: dict[str, Any], read_config_map: ConfigMapReader, origin_namespace: bool
) -> ResolvedSource:
    source = spec["source"]
    if "builtin" in source:
        builtin = catalog().get(source["builtin"])
        if builtin is None:
            raise SourceError(reasons.INVALID_SPEC, f"there is no builtin program {source['builtin']!r}")
        problems = builtin.problems(spec)
        if problems:
            raise SourceError(reasons.INVALID_SPEC, "; ".join(problems))
        return ResolvedSource(builtin.source, f"builtin:{builtin.name}")
    if "inline" in source:
        return ResolvedSource(source["inline"], "inline")
    ref = source["configMapRef"]
    data = read_config_map(namespace, ref["name"])
    if data is None:
        raise SourceError(reasons.SOURCE_NOT_FOUND, f"ConfigMap {namespace}/{ref['name']} does not exist")
    if ref["key"] not in data:
        raise SourceError(
            reasons.SOURCE_NOT_FOUND, f"ConfigMap {namespace}/{ref['name']} has no key {ref['key']!r}"
        )
    text = data[ref["key"]]
    if len(text) > MAX_SOURCE_CHARS:
        raise SourceError(
            reasons.INVALID_SPEC,
            f"ConfigMap {namespace}/{ref['name']} key {ref['key']!r} has {len(text)} characters: "
            f"a source may have at most {MAX_SOURCE_CHARS}",
        )
    where = f"{namespace}/{ref['name']}" if origin_namespace else ref["name"]
    return ResolvedSource(text, f"configMap:{where}/{ref['key']}")
