"""bpfman's OCI bytecode image format: which programs an image holds (its config's labels) and
where its object file is (at the root of its layer). docs/bytecode.md lists the labels read."""

from __future__ import annotations

import gzip
import io
import json
import tarfile
import zlib
from dataclasses import dataclass

from node_agent.errors import FunctionNotFound, ImagePullFailed

PROGRAMS_LABEL = "io.ebpf.programs"  # {"<function>": "<program type>", ...}
MAPS_LABEL = "io.ebpf.maps"  # {"<map>": "<map type>", ...}
# The first version of the format: one program per image.
LEGACY_FUNCTION_LABELS = ("io.ebpf.bpf_function_name", "io.ebpf.program_name")
LEGACY_TYPE_LABEL = "io.ebpf.program_type"
FILENAME_LABEL = "io.ebpf.filename"
MAX_LABEL = 64 * 1024
LAYER_TYPES = (
    "application/vnd.oci.image.layer.v1.tar",
    "application/vnd.oci.image.layer.v1.tar+gzip",
    "application/vnd.docker.image.rootfs.diff.tar.gzip",
    "application/vnd.docker.image.rootfs.diff.tar",
)
EM_BPF = 247


@dataclass(frozen=True)
class ImageLabels:
    programs: dict[str, str]  # function -> program type, as the image says
    maps: dict[str, str]
    filename: str | None  # the object's file name when the image names it

    def require(self, function: str) -> None:
        if function not in self.programs:
            # The names the image lists are not echoed: they are the registry's bytes.
            raise FunctionNotFound(
                f"function {function!r} is not among the {len(self.programs)} programs of the image's "
                f"{PROGRAMS_LABEL} label"
            )


def _json_object(value: str, label: str) -> dict[str, str]:
    if len(value) > MAX_LABEL:
        raise ImagePullFailed(f"image label {label} is over {MAX_LABEL} bytes")
    try:
        parsed = json.loads(value)
    except ValueError as err:
        raise ImagePullFailed(f"image label {label} is not JSON") from err
    if not isinstance(parsed, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in parsed.items()
    ):
        raise ImagePullFailed(f"image label {label} must be a JSON object of strings")
    return parsed


def labels_from_config(config: bytes) -> ImageLabels:
    """The bpfman labels of an image config blob; refuses an image that has none."""
    try:
        body = json.loads(config)
        labels = (body.get("config") or {}).get("Labels") or {}
    except (ValueError, UnicodeDecodeError, AttributeError) as err:
        raise ImagePullFailed("the image config is not a JSON image configuration") from err
    if not isinstance(labels, dict):
        raise ImagePullFailed("the image config's labels are not an object")
    labels = {k: v for k, v in labels.items() if isinstance(k, str) and isinstance(v, str)}
    filename = labels.get(FILENAME_LABEL) or None
    maps = _json_object(labels[MAPS_LABEL], MAPS_LABEL) if MAPS_LABEL in labels else {}
    if PROGRAMS_LABEL in labels:
        return ImageLabels(_json_object(labels[PROGRAMS_LABEL], PROGRAMS_LABEL), maps, filename)
    for legacy in LEGACY_FUNCTION_LABELS:
        if labels.get(legacy):
            return ImageLabels({labels[legacy]: labels.get(LEGACY_TYPE_LABEL, "")}, maps, filename)
    raise ImagePullFailed(f"not a bpfman bytecode image: its config has no {PROGRAMS_LABEL} label")


class _CappedReader(io.RawIOBase):
    """Decompressed bytes of a layer, refused past `cap` (a gzip bomb stops here)."""

    def __init__(self, data: bytes, cap: int) -> None:
        self._gzip = data[:2] == b"\x1f\x8b"
        self._raw = io.BytesIO(data)
        self._zlib = zlib.decompressobj(16 + zlib.MAX_WBITS) if self._gzip else None
        self._pending = b""
        self._total = 0
        self._cap = cap

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        while not self._pending:
            raw = self._raw.read(64 * 1024)
            if not raw:
                if self._zlib is not None:
                    self._pending = self._zlib.flush()
                    self._zlib = None
                    continue
                return 0
            self._pending = self._zlib.decompress(raw, 1 << 20) if self._zlib else raw
            if self._zlib is not None and self._zlib.unconsumed_tail:
                self._raw.seek(-len(self._zlib.unconsumed_tail), io.SEEK_CUR)
        count = min(len(buffer), len(self._pending))
        buffer[:count] = self._pending[:count]
        self._pending = self._pending[count:]
        self._total += count
        if self._total > self._cap:
            raise ImagePullFailed(f"the image layer unpacks to over {self._cap} bytes")
        return count


def _root_name(name: str) -> str | None:
    """The file name of a member at the layer's root (`x.o` or `./x.o`), else None."""
    name = name[2:] if name.startswith("./") else name
    return name if name and "/" not in name and name not in (".", "..") else None


def object_from_layer(layer: bytes, *, filename: str | None, elf_cap: int, unpacked_cap: int) -> bytes:
    """The BPF object at the root of a layer tar (gzip or not): the one named `filename`, else
    the only `*.o` there. Refuses anything else: several objects, none, an oversized or non-BPF one."""
    found: dict[str, bytes] = {}
    try:
        with tarfile.open(fileobj=io.BufferedReader(_CappedReader(layer, unpacked_cap)), mode="r|") as tar:
            for member in tar:
                name = _root_name(member.name)
                if name is None or not member.isfile():
                    continue
                if (filename is not None and name != filename) or (
                    filename is None and not name.endswith(".o")
                ):
                    continue
                if member.size > elf_cap:
                    raise ImagePullFailed(f"the image's object {name!r} is over the {elf_cap}-byte limit")
                extracted = tar.extractfile(member)
                found[name] = extracted.read() if extracted is not None else b""
    except (tarfile.TarError, OSError, EOFError, zlib.error, gzip.BadGzipFile) as err:
        raise ImagePullFailed(
            f"the image layer is not a readable tar archive ({type(err).__name__})"
        ) from err
    if len(found) != 1:
        wanted = repr(filename) if filename else "one *.o file"
        raise ImagePullFailed(f"the image layer must hold {wanted} at its root; found {len(found)}")
    name, data = found.popitem()
    if data[:4] != b"\x7fELF" or len(data) < 20 or int.from_bytes(data[18:20], "little") != EM_BPF:
        raise ImagePullFailed(f"the image's {name!r} is not a little-endian BPF ELF object")
    return data
