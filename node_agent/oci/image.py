"""From a reference to one image manifest: an index (OCI or Docker manifest list) yields the
entry for this node's platform (linux/<arch>), or its only entry."""

from __future__ import annotations

import platform

from node_agent.errors import ImagePullFailed
from node_agent.oci.registry import INDEX_TYPES, Descriptor, Manifest, Registry

_ARCH = {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm", "ppc64le": "ppc64le", "s390x": "s390x"}
MAX_INDEX_ENTRIES = 256


def node_arch() -> str:
    machine = platform.machine()
    return _ARCH.get(machine, machine)


def select(index: Manifest, arch: str) -> Descriptor:
    """The index entry for linux/`arch`, or the only entry; refuses otherwise."""
    entries = index.body.get("manifests")
    if not isinstance(entries, list) or not entries:
        raise ImagePullFailed("the image index lists no manifests")
    descriptors = [
        Descriptor.parse(raw, f"index entry {n}") for n, raw in enumerate(entries[:MAX_INDEX_ENTRIES])
    ]
    # Signatures and attestations stored in an index are not images to run.
    images = [d for d in descriptors if d.media_type not in INDEX_TYPES and d.platform.get("os") != "unknown"]
    matching = [
        d for d in images if d.platform.get("os") == "linux" and d.platform.get("architecture") == arch
    ]
    if matching:
        return matching[0]
    if len(images) == 1:
        return images[0]
    raise ImagePullFailed(f"the image index has no linux/{arch} manifest among {len(images)} entries")


def resolve(registry: Registry, repository: str, reference: str, arch: str) -> tuple[Manifest, Manifest]:
    """(the manifest `reference` names, the image manifest to use): the same one unless an index."""
    top = registry.manifest(repository, reference)
    if not top.is_index:
        return top, top
    chosen = registry.manifest(repository, select(top, arch).digest)
    if chosen.is_index:
        raise ImagePullFailed("the image index points at another index")
    return top, chosen


def config_and_layers(manifest: Manifest) -> tuple[Descriptor, list[Descriptor]]:
    config = Descriptor.parse(manifest.body.get("config"), "the image's config")
    layers = manifest.body.get("layers")
    if not isinstance(layers, list) or not layers:
        raise ImagePullFailed("the image manifest has no layers")
    return config, [Descriptor.parse(raw, f"layer {n}") for n, raw in enumerate(layers[:64])]
