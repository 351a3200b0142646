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


def resolve(namespace: str, spec: dict[str, Any], read_config_map: ConfigMapReader) -> ResolvedSource:
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
    return ResolvedSource(data[ref["key"]], f"configMap:{ref['name']}/{ref['key']}")
