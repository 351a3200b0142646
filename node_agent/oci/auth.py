"""Registry credentials: a kubernetes.io/dockerconfigjson Secret's entry for a host, and the
WWW-Authenticate challenge a registry answers 401 with."""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass

from node_agent.errors import ImagePullFailed
from node_agent.oci.reference import DOCKER_HUB, DOCKER_HUB_API

DOCKERCONFIG_KEY = ".dockerconfigjson"
MAX_SECRET_BYTES = 1 << 20
# Keys Docker Hub credentials are stored under, besides the bare host.
_HUB_KEYS = ("https://index.docker.io/v1/", "index.docker.io", DOCKER_HUB, DOCKER_HUB_API)


@dataclass(frozen=True)
class Credentials:
    username: str
    password: str

    def basic(self) -> str:
        token = base64.b64encode(f"{self.username}:{self.password}".encode()).decode()
        return f"Basic {token}"

    def __repr__(self) -> str:  # never print a password
        return f"Credentials(username={self.username!r}, password=***)"


def _host_of(key: str) -> str:
    key = re.sub(r"^[a-z]+://", "", key)
    return key.split("/", 1)[0]


def from_dockerconfigjson(data: Mapping[str, bytes], registry: str) -> Credentials | None:
    """The credentials for `registry` (host[:port]) in a dockerconfigjson Secret's data, or None
    when it names none. Raises ImagePullFailed when the Secret is not a dockerconfigjson."""
    raw = data.get(DOCKERCONFIG_KEY)
    if raw is None or len(raw) > MAX_SECRET_BYTES:
        raise ImagePullFailed(f"the image pull secret has no {DOCKERCONFIG_KEY} key (or it is over 1 MiB)")
    try:
        auths = json.loads(raw).get("auths", {})
    except (ValueError, AttributeError, UnicodeDecodeError) as err:
        raise ImagePullFailed(f"the image pull secret's {DOCKERCONFIG_KEY} is not JSON") from err
    if not isinstance(auths, dict):
        raise ImagePullFailed(f"the image pull secret's {DOCKERCONFIG_KEY} has no auths object")
    wanted = _HUB_KEYS if registry == DOCKER_HUB else (registry,)
    for key, entry in auths.items():
        if not isinstance(entry, dict) or not (key in wanted or _host_of(key) in wanted):
            continue
        user, password = entry.get("username"), entry.get("password")
        if isinstance(entry.get("auth"), str):
            try:
                user, _, password = base64.b64decode(entry["auth"], validate=True).decode().partition(":")
            except (binascii.Error, UnicodeDecodeError) as err:
                raise ImagePullFailed(f"the image pull secret's auth for {registry} is not base64") from err
        if isinstance(user, str) and isinstance(password, str):
            return Credentials(user, password)
    return None


@dataclass(frozen=True)
class Challenge:
    scheme: str  # "basic" or "bearer" (lowercase)
    params: dict[str, str]


_PARAM = re.compile(r'([A-Za-z_]+)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^\s,]+))')


def parse_challenge(header: str | None) -> Challenge | None:
    if not header or len(header) > 4096:
        return None
    scheme, _, rest = header.strip().partition(" ")
    params = {
        m.group(1).lower(): m.group(2) if m.group(2) is not None else m.group(3)
        for m in _PARAM.finditer(rest)
    }
    return Challenge(scheme.lower(), params)
