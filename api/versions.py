"""Content addressing of EbpfProgramVersions: the hash that names a version and that agents check.
Pure: no API calls."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any, Final

HASH_FIELD: Final = "contentHash"


def canonical(spec: Mapping[str, Any]) -> bytes:
    """The canonical JSON of a version's spec without its hash: keys sorted, no spaces."""
    rest = {k: v for k, v in spec.items() if k != HASH_FIELD}
    return json.dumps(rest, sort_keys=True, separators=(",", ":")).encode()


def content_hash(spec: Mapping[str, Any]) -> str:
    """Hex sha256 of canonical(spec); a contentHash already in `spec` is ignored."""
    return hashlib.sha256(canonical(spec)).hexdigest()


def with_hash(spec: Mapping[str, Any]) -> dict[str, Any]:
    """`spec` with its contentHash set."""
    return {**spec, HASH_FIELD: content_hash(spec)}


def matches(spec: Mapping[str, Any]) -> bool:
    """Whether a version's spec is what its contentHash says."""
    return spec.get(HASH_FIELD) == content_hash(spec)
