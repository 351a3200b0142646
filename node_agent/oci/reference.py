"""OCI image references: `[registry[:port]/]repository[:tag][@sha256:<64 hex>]`, with docker.io's
defaults (a bare name is `library/<name>` on Docker Hub)."""

from __future__ import annotations

import re
from dataclasses import dataclass

from node_agent.errors import ImagePullFailed

DOCKER_HUB = "docker.io"
# Docker Hub's API host differs from the name users write.
DOCKER_HUB_API = "registry-1.docker.io"
MAX_REFERENCE = 1024

_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_REPOSITORY = re.compile(rf"^{_COMPONENT}(?:/{_COMPONENT})*$")
_TAG = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")
_DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")
_HOST = re.compile(
    r"^(?:[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)*"
    r"|\[[0-9A-Fa-f:.]+\])(?::[0-9]{1,5})?$"
)


class InvalidReference(ImagePullFailed):
    """The image URL is not an OCI reference bpfleet can pull."""


@dataclass(frozen=True)
class Reference:
    registry: str  # host[:port] as written (docker.io for Docker Hub)
    repository: str
    tag: str | None = None
    digest: str | None = None  # sha256:<hex>

    @property
    def api_host(self) -> str:
        return DOCKER_HUB_API if self.registry == DOCKER_HUB else self.registry

    @property
    def hostname(self) -> str:
        """The host without its port (brackets of an IPv6 literal removed)."""
        host = self.registry
        if host.startswith("["):
            return host[1 : host.index("]")]
        return host.rsplit(":", 1)[0] if ":" in host else host

    @property
    def manifest_ref(self) -> str:
        """What to ask the registry for: the digest when pinned, else the tag."""
        return self.digest or self.tag or "latest"

    def __str__(self) -> str:
        text = f"{self.registry}/{self.repository}"
        if self.tag:
            text += f":{self.tag}"
        if self.digest:
            text += f"@{self.digest}"
        return text


def _looks_like_host(part: str) -> bool:
    # Docker's rule: the first component is a registry if it has a dot or a port, or is localhost.
    return "." in part or ":" in part or part == "localhost" or part.startswith("[")


def parse(url: str) -> Reference:
    """Parses an OCI reference; raises InvalidReference naming what is wrong (never echoing more
    than the reference itself, which is the user's own text)."""
    if not url or len(url) > MAX_REFERENCE:
        raise InvalidReference(f"image reference must be 1 to {MAX_REFERENCE} characters")
    if any(c.isspace() or ord(c) < 0x21 or ord(c) > 0x7E for c in url):
        raise InvalidReference("image reference has whitespace or non-ASCII characters")
    if "://" in url:
        raise InvalidReference("image reference must not have a scheme (write host/repository:tag)")
    rest, digest = url, None
    if "@" in rest:
        rest, digest = rest.split("@", 1)
        if not _DIGEST.match(digest):
            raise InvalidReference("image digest must be sha256:<64 lowercase hex>")
    first, slash, remainder = rest.partition("/")
    if slash and _looks_like_host(first):
        registry, path = first, remainder
        if not _HOST.match(registry):
            raise InvalidReference(f"{registry!r} is not a registry host[:port]")
    else:
        registry, path = DOCKER_HUB, rest
    tag = None
    last = path.rsplit("/", 1)[-1]
    if ":" in last:
        path, tag = path.rsplit(":", 1)
        if not _TAG.match(tag):
            raise InvalidReference(f"{tag!r} is not a valid tag")
    if registry == DOCKER_HUB and "/" not in path:
        path = f"library/{path}"
    if not _REPOSITORY.match(path) or len(path) > 255:
        raise InvalidReference(f"{path!r} is not a valid repository (lowercase components separated by /)")
    if tag is None and digest is None:
        tag = "latest"
    return Reference(registry=registry, repository=path, tag=tag, digest=digest)


def is_loopback(hostname: str) -> bool:
    return (
        hostname in ("localhost", "::1")
        or re.match(r"^127\.\d{1,3}\.\d{1,3}\.\d{1,3}$", hostname) is not None
    )
