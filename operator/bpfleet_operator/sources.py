"""Resolves spec.source to the C text the nodes compile, whatever its kind."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from bpfleet_api import reasons
from bpfleet_operator.builtins import catalog


class SourceError(Exception):
    """The spec cannot be served as it is; `reason` is the stable reason for status."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class ResolvedSource:
    text: str
    origin: str

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.text.encode()).hexdigest()

    def as_spec(self) -> dict[str, str]:
        return {"text": self.text, "sha256": self.sha256, "origin": self.origin}


# Reads a ConfigMap's data by (namespace, name); None when it does not exist.
ConfigMapReader = Callable[[str, str], "dict[str, str] | None"]


# A version object's spec.source.text holds at most this (the CRD's maxLength): a longer ConfigMap
# source is refused here, with a message, rather than by the API server on the version's create.
MAX_SOURCE_CHARS = 65536


def resolve(
    namespace: str,
    spec: dict[str, Any],
    read_config_map: ConfigMapReader,
    *,
    origin_namespace: bool = False,
) -> ResolvedSource:
    """`namespace`: where a configMapRef is read; `origin_namespace`: name it in the origin (a
    ClusterEbpfProgram's reference names its namespace, an EbpfProgram's is its own)."""
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
