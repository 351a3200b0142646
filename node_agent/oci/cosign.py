"""cosign-compatible signatures, verified offline against configured public keys.

cosign stores an image's signatures as a manifest tagged `sha256-<hex of the image digest>.sig` in
the image's repository. Each of its layers is a simple-signing payload (JSON whose
critical.image.docker-manifest-digest names the signed image) with the signature, base64, in the
layer's `dev.cosignproject.cosign/signature` annotation. No transparency log is consulted: the
configured keys are the only trust root."""

from __future__ import annotations

import base64
import binascii
import json
from typing import TYPE_CHECKING

from node_agent.errors import SignatureInvalid
from node_agent.oci.registry import Descriptor, Registry

SIMPLESIGNING = "application/vnd.dev.cosign.simplesigning.v1+json"
SIGNATURE_ANNOTATION = "dev.cosignproject.cosign/signature"
PAYLOAD_TYPE = "cosign container image signature"
MAX_PAYLOAD = 64 * 1024
MAX_SIGNATURES = 32

# cryptography is imported where keys are used, not with the module: it is ~9 MiB of the agent's
# memory, which a node with no keys configured never needs.
if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

    PublicKey = ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey | rsa.RSAPublicKey


class Unsigned(SignatureInvalid):
    """The image has no cosign signature at all (as opposed to one that does not verify)."""


def load_public_keys(pems: tuple[bytes, ...]) -> list[PublicKey]:
    """The keys of PEM blocks (ECDSA, Ed25519 or RSA); a bad one is the admin's error: ValueError."""
    if not pems:
        return []
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

    keys: list[PublicKey] = []
    for index, pem in enumerate(pems):
        key = serialization.load_pem_public_key(pem)
        if not isinstance(key, ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey | rsa.RSAPublicKey):
            raise ValueError(f"bytecode public key {index} is neither ECDSA, Ed25519 nor RSA")
        keys.append(key)
    return keys


def signature_tag(image_digest: str) -> str:
    return image_digest.replace(":", "-", 1) + ".sig"


def _verifies(key: PublicKey, signature: bytes, payload: bytes) -> bool:
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding

    try:
        if isinstance(key, ec.EllipticCurvePublicKey):
            key.verify(signature, payload, ec.ECDSA(hashes.SHA256()))
        elif isinstance(key, ed25519.Ed25519PublicKey):
            key.verify(signature, payload)
        else:
            key.verify(signature, payload, padding.PKCS1v15(), hashes.SHA256())
    except (InvalidSignature, ValueError):
        return False
    return True


def payload_names(payload: bytes, image_digest: str) -> bool:
    """Whether a verified simple-signing payload is a cosign image signature of `image_digest`."""
    try:
        critical = json.loads(payload).get("critical") or {}
        signed = (critical.get("image") or {}).get("docker-manifest-digest")
        kind = critical.get("type")
    except (ValueError, UnicodeDecodeError, AttributeError):
        return False
    return signed == image_digest and kind == PAYLOAD_TYPE


def verify(registry: Registry, repository: str, image_digest: str, keys: list[PublicKey]) -> None:
    """Returns when one signature of `image_digest` verifies against one of `keys`; raises
    SignatureInvalid saying what was expected otherwise."""
    tag = signature_tag(image_digest)
    manifest = registry.manifest_or_none(repository, tag)
    if manifest is None:
        raise Unsigned(f"image {image_digest} is unsigned: no cosign signature (tag {tag})")
    layers = manifest.body.get("layers")
    if not isinstance(layers, list):
        raise SignatureInvalid(f"the signature manifest {tag} has no layers")
    tried = 0
    for index, raw in enumerate(layers[:MAX_SIGNATURES]):
        descriptor = Descriptor.parse(raw, f"signature layer {index}")
        encoded = descriptor.annotations.get(SIGNATURE_ANNOTATION)
        if descriptor.media_type != SIMPLESIGNING or not isinstance(encoded, str):
            continue
        try:
            signature = base64.b64decode(encoded, validate=True)
        except binascii.Error:
            continue
        tried += 1
        payload = registry.blob(repository, descriptor, MAX_PAYLOAD)
        if any(_verifies(key, signature, payload) for key in keys) and payload_names(payload, image_digest):
            return
    raise SignatureInvalid(
        f"no signature of image {image_digest} verifies against the {len(keys)} configured public key(s) "
        f"({tried} signature(s) checked; expected a cosign signature of that digest)"
    )
