"""An EbpfProgramVersion's spec.source as the agent builds it: C text, or bytecode (docs/api.md).

C kinds: {text, sha256?, origin}. Bytecode: {bytecode: {data: <base64 ELF>} | {image: {url,
pullPolicy, imagePullSecret?}}, sha256?, origin}. The version's contentHash covers all of it.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from collections.abc import Mapping
from typing import Any

from node_agent.errors import InvalidSpec
from node_agent.kernel.backend import Bytecode

MAX_ELF_BYTES = 16 << 20  # what the agent loads at most, whatever the operator let through
_SHA256 = re.compile(r"[0-9a-f]{64}")


def parse(source: Mapping[str, Any]) -> tuple[str, Bytecode | None]:
    """(C text, None) or ("", the bytecode); raises InvalidSpec."""
    if not isinstance(source, Mapping):
        raise InvalidSpec("source must be a map")
    bytecode = source.get("bytecode")
    if bytecode is None:
        text = source["text"]
        if not isinstance(text, str):
            raise InvalidSpec("source.text must be a string")
        return text, None
    if "text" in source or not isinstance(bytecode, Mapping):
        raise InvalidSpec("source has exactly one of text and bytecode, and bytecode is a map")
    pinned = source.get("sha256")
    if pinned is not None and not (isinstance(pinned, str) and _SHA256.fullmatch(pinned)):
        raise InvalidSpec("source.sha256 must be 64 lowercase hex digits")
    if "data" in bytecode:
        return "", Bytecode(data=_data(bytecode["data"], pinned), sha256=pinned)
    if "image" in bytecode:
        return "", Bytecode(image=_image(bytecode["image"]), sha256=pinned)
    raise InvalidSpec("source.bytecode has neither data nor image")


def _data(encoded: object, pinned: str | None) -> bytes:
    if not isinstance(encoded, str) or len(encoded) > (MAX_ELF_BYTES // 3 + 1) * 4:
        raise InvalidSpec(f"source.bytecode.data must be base64 of at most {MAX_ELF_BYTES} bytes")
    try:
        data = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidSpec("source.bytecode.data is not valid base64") from None
    if pinned is not None and hashlib.sha256(data).hexdigest() != pinned:
        # The operator checked it; a version that disagrees with itself is not served.
        raise InvalidSpec(f"source.bytecode.data has sha256 {hashlib.sha256(data).hexdigest()}, not {pinned}")
    return data


def _image(image: object) -> Any:
    if not isinstance(image, Mapping) or not isinstance(image.get("url"), str):
        raise InvalidSpec("source.bytecode.image needs a url")
    try:
        from node_agent.oci.fetch import ImageSource
    except ImportError:
        raise InvalidSpec("this agent cannot pull bytecode images") from None
    secret = image.get("imagePullSecret")
    return ImageSource(str(image["url"]), str(image.get("pullPolicy") or "IfNotPresent"), secret or None)


def version_fields(bytecode: Bytecode | None) -> list[Any]:
    """What of the bytecode makes a new version: its content's hash (or the image and its pin)."""
    if bytecode is None:
        return []
    if bytecode.data is not None:
        return [["bytecode", hashlib.sha256(bytecode.data).hexdigest()]]
    image = bytecode.image
    return [
        ["bytecode-image", getattr(image, "url", None), getattr(image, "pull_policy", None), bytecode.sha256]
    ]
