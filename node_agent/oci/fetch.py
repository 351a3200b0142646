"""The agent's entry point for image sources: policy (registry allowlist, signatures), the local
cache by manifest digest, then the pull itself. Runs in the agent process, before the compile worker."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from node_agent.errors import (
    ImagePullFailed,
    InvalidSpec,
    RegistryNotAllowed,
    SignatureInvalid,
    SourceHashMismatch,
)
from node_agent.oci import bpfman, cosign, image
from node_agent.oci.auth import Credentials, from_dockerconfigjson
from node_agent.oci.cache import Cache, Entry, access_id, key_set_id
from node_agent.oci.reference import Reference, parse
from node_agent.oci.registry import Limits, Manifest, Registry

log = logging.getLogger(__name__)
PULL_POLICIES = ("Always", "IfNotPresent")
ReadSecret = Callable[[str, str], Mapping[str, bytes] | None]


@dataclass(frozen=True)
class ImageSource:
    url: str
    pull_policy: str = "IfNotPresent"
    pull_secret: str | None = None


def image_source(raw: Mapping[str, Any]) -> ImageSource:
    """The ImageSource of a version's `source.bytecode.image` ({url, pullPolicy, imagePullSecret?})."""
    url, policy = raw.get("url"), raw.get("pullPolicy") or "IfNotPresent"
    secret = raw.get("imagePullSecret") or None
    if not isinstance(url, str) or not url:
        raise InvalidSpec("source.bytecode.image.url must be a non-empty string")
    if policy not in PULL_POLICIES:
        raise InvalidSpec(f"source.bytecode.image.pullPolicy must be one of {', '.join(PULL_POLICIES)}")
    if secret is not None and not isinstance(secret, str):
        raise InvalidSpec("source.bytecode.image.imagePullSecret must be a Secret's name")
    return ImageSource(url, policy, secret)


@dataclass(frozen=True)
class BytecodePolicy:
    public_keys: tuple[bytes, ...] = ()  # PEM public keys (cosign); empty: signatures not checked
    require_signatures: bool = False  # refuse unsigned (or unverifiable) images
    allowed_registries: tuple[str, ...] = ()  # host[:port]; for namespaced programs only; empty = none
    cache_dir: Path = Path("/var/lib/bpfleet/bytecode")
    insecure_registries: tuple[str, ...] = ()  # host[:port] reached over plain http (loopback always is)
    limits: Limits = field(default_factory=Limits)


def check_sha256(data: bytes, expected: str | None) -> None:
    if expected is None:
        return
    got = hashlib.sha256(data).hexdigest()
    if got != expected.lower():
        # The operator's words for the same refusal of C and ConfigMap sources.
        raise SourceHashMismatch(f"expected sha256 {expected.lower()}, got {got} (spec.source.sha256)")


def _allowed(ref: Reference, policy: BytecodePolicy) -> None:
    if ref.registry not in policy.allowed_registries:
        allowed = ", ".join(policy.allowed_registries) or "none"
        raise RegistryNotAllowed(
            f"registry {ref.registry} is not in the agent's allowlist for namespaced programs"
            f" (allowed: {allowed})"
        )


def _credentials(
    source: ImageSource, namespace: str, ref: Reference, read_secret: ReadSecret
) -> Credentials | None:
    if not source.pull_secret:
        return None
    data = read_secret(namespace, source.pull_secret)
    if data is None:
        raise ImagePullFailed(f"image pull secret {namespace}/{source.pull_secret} not found")
    return from_dockerconfigjson(data, ref.registry)


def _signed(
    registry: Registry, ref: Reference, top: Manifest, chosen: Manifest, policy: BytecodePolicy
) -> bool:
    """Whether a signature verified; raises when one is required, or when one is there and fails."""
    if not policy.public_keys:
        return False
    keys = cosign.load_public_keys(policy.public_keys)
    try:
        cosign.verify(registry, ref.repository, top.digest, keys)
        return True
    except cosign.Unsigned as unsigned:
        if chosen.digest == top.digest:
            if policy.require_signatures:
                raise _required(unsigned) from None
            return False
    # An index may be signed per platform (cosign sign --recursive) rather than as a whole.
    try:
        cosign.verify(registry, ref.repository, chosen.digest, keys)
        return True
    except cosign.Unsigned as unsigned:
        if policy.require_signatures:
            raise _required(unsigned) from None
        return False


def _required(unsigned: cosign.Unsigned) -> cosign.Unsigned:
    # The user must learn that the node's policy, not a broken image, is why: sign it, or ask.
    return cosign.Unsigned(f"{unsigned}; this node loads only images signed with its configured keys")


def _pull(registry: Registry, ref: Reference, chosen: Manifest, function: str, limits: Limits) -> Entry:
    config, layers = image.config_and_layers(chosen)
    labels = bpfman.labels_from_config(registry.blob(ref.repository, config, limits.manifest_bytes))
    labels.require(function)  # before the layer's bytes: a wrong name costs no download
    if len(layers) != 1 or layers[0].media_type not in bpfman.LAYER_TYPES:
        raise ImagePullFailed("a bpfman image has exactly one tar layer (gzip or not)")
    layer = registry.blob(ref.repository, layers[0], limits.blob_bytes)
    elf = bpfman.object_from_layer(
        layer, filename=labels.filename, elf_cap=limits.elf_bytes, unpacked_cap=limits.blob_bytes
    )
    return Entry(labels.programs, labels.maps, elf, ())


def _pick(entry: Entry, function: str) -> bytes:
    bpfman.ImageLabels(entry.programs, entry.maps, None).require(function)
    return entry.elf


def fetch_image(
    source: ImageSource,
    *,
    namespace: str,
    cluster: bool,
    policy: BytecodePolicy,
    read_secret: ReadSecret,
    function: str,
    arch: str | None = None,
) -> bytes:
    """The ELF bytes of `function`'s object in a bpfman-format image. Raises ProgramBuildError
    subclasses: ImagePullFailed, SignatureInvalid, RegistryNotAllowed, FunctionNotFound."""
    ref = parse(source.url)
    if source.pull_policy not in PULL_POLICIES:
        raise ImagePullFailed(f"pullPolicy must be one of {', '.join(PULL_POLICIES)}")
    if not cluster:
        _allowed(ref, policy)
    if policy.require_signatures and not policy.public_keys:
        raise SignatureInvalid("signed bytecode is required but the agent has no public key configured")
    cache = Cache(policy.cache_dir)
    keyset = key_set_id(policy.public_keys) if policy.public_keys else None
    credentials = _credentials(source, namespace, ref, read_secret)
    access = access_id(
        ref.registry, *((credentials.username, credentials.password) if credentials else (None, None))
    )
    # Tags are resolved per access: another tenant's private resolution is not this one's.
    tag_key = f"{access}/{ref.registry}/{ref.repository}:{ref.tag}"
    digest = ref.digest or (cache.tag(tag_key) if source.pull_policy == "IfNotPresent" else None)
    entry = cache.get(digest) if digest else None
    if entry is not None and entry.readable_by(access) and (keyset is None or keyset in entry.verified_by):
        return _pick(entry, function)

    registry = Registry(
        ref.api_host,
        credentials=credentials,
        insecure=ref.registry in policy.insecure_registries,
        limits=policy.limits,
    )
    # The manifests are always asked for here: the registry decides whether these credentials may
    # read this image, even when its bytes are cached.
    top, chosen = image.resolve(
        registry, ref.repository, digest or ref.manifest_ref, arch or image.node_arch()
    )
    signed = _signed(registry, ref, top, chosen, policy)  # before any of the image's content is read
    cached = cache.get(top.digest)
    entry = cached or _pull(registry, ref, chosen, function, policy.limits)
    if signed and keyset not in entry.verified_by:
        entry = replace(entry, verified_by=(*entry.verified_by, keyset or ""))
    if access not in entry.access:
        entry = replace(entry, access=(*entry.access, access))
    try:  # written only when it adds something: a pull of a cached image writes nothing
        if entry != cached:
            cache.put(top.digest, entry)
        if ref.digest is None and cache.tag(tag_key) != top.digest:
            cache.remember_tag(tag_key, top.digest)
    except OSError as err:  # a full or read-only disk costs the next pull, not this one
        log.warning("bytecode cache %s not written: %s", policy.cache_dir, err)
    return _pick(entry, function)
