"""What resolving spec.source yields, and how it fails: shared by the C and the bytecode resolvers."""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any


class SourceError(Exception):
    """The spec cannot be served as it is; `reason` is the stable reason for status."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class ResolvedSource:
    """Exactly one of `text` (C), `elf` (bytecode read by the operator) or `image` (bytecode the
    agents pull; `pinned` is then the sha256 the user pinned, if any)."""

    text: str | None
    origin: str
    elf: bytes | None = None
    image: Mapping[str, str] | None = None
    pinned: str | None = None

    @property
    def sha256(self) -> str | None:
        if self.text is not None:
            return hashlib.sha256(self.text.encode()).hexdigest()
        if self.elf is not None:
            return hashlib.sha256(self.elf).hexdigest()
        return self.pinned

    def as_spec(self) -> dict[str, Any]:
        spec: dict[str, Any] = {"origin": self.origin}
        if self.text is not None:
            spec["text"] = self.text
        elif self.elf is not None:
            spec["bytecode"] = {"data": base64.b64encode(self.elf).decode()}
        else:
            spec["bytecode"] = {"image": dict(self.image or {})}
        if (digest := self.sha256) is not None:
            spec["sha256"] = digest
        return spec


# Reads a ConfigMap's data by (namespace, name); None when it does not exist.
ConfigMapReader = Callable[[str, str], "dict[str, str] | None"]
# Reads a ConfigMap's binaryData by (namespace, name), decoded; None when it does not exist.
BinaryReader = Callable[[str, str], "dict[str, bytes] | None"]


def no_binary(namespace: str, name: str) -> dict[str, bytes] | None:
    return None
