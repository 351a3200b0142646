"""The node's cache of pulled bytecode, by manifest digest: each image's labels and object (its
sha256 re-checked on every read), the tags resolved once, which key sets verified it, and who may
reuse it. An image pulled with credentials is served from the cache only to a fetch with the same
credentials (or once it was pulled anonymously): knowing a private image's digest or tag is not
enough to get it from another tenant's pull."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Entry:
    programs: dict[str, str]
    maps: dict[str, str]
    elf: bytes
    verified_by: tuple[str, ...]  # key-set fingerprints whose signature check passed
    access: tuple[str, ...] = ()  # access ids (see access_id) the registry served this image to

    def readable_by(self, access: str) -> bool:
        return ANONYMOUS in self.access or access in self.access


ANONYMOUS = "anonymous"


def access_id(registry: str, username: str | None, password: str | None) -> str:
    """Who pulled: anonymous, or a fingerprint of the credentials (never the credentials)."""
    if username is None:
        return ANONYMOUS
    return hashlib.sha256(f"{registry}\0{username}\0{password}".encode()).hexdigest()


def key_set_id(pems: tuple[bytes, ...]) -> str:
    return hashlib.sha256(b"\0".join(sorted(pems))).hexdigest()


def _write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class Cache:
    def __init__(self, root: Path) -> None:
        self.root = root

    def _image(self, digest: str) -> Path:
        return self.root / "images" / f"{digest.removeprefix('sha256:')}.json"

    def _elf(self, hexdigest: str) -> Path:
        return self.root / "objects" / f"{hexdigest}.o"

    def _tag(self, reference: str) -> Path:
        return self.root / "tags" / hashlib.sha256(reference.encode()).hexdigest()

    def tag(self, reference: str) -> str | None:
        try:
            digest = self._tag(reference).read_text().strip()
        except OSError:
            return None
        return digest if digest.startswith("sha256:") and len(digest) == 71 else None

    def remember_tag(self, reference: str, digest: str) -> None:
        _write(self._tag(reference), digest.encode())

    def get(self, digest: str) -> Entry | None:
        """The entry, or None when absent or damaged (then it is pulled again)."""
        try:
            meta = json.loads(self._image(digest).read_text())
            elf = self._elf(meta["elf"]).read_bytes()
        except (OSError, ValueError, KeyError, TypeError):
            return None
        if hashlib.sha256(elf).hexdigest() != meta["elf"]:
            return None
        verified, access = tuple(meta.get("verified", [])), tuple(meta.get("access", []))
        return Entry(meta["programs"], meta.get("maps", {}), elf, verified, access)

    def put(self, digest: str, entry: Entry) -> None:
        elf_hex = hashlib.sha256(entry.elf).hexdigest()
        _write(self._elf(elf_hex), entry.elf)
        meta = {
            "programs": entry.programs,
            "maps": entry.maps,
            "elf": elf_hex,
            "verified": list(entry.verified_by),
            "access": list(entry.access),
        }
        _write(self._image(digest), json.dumps(meta, sort_keys=True).encode())
