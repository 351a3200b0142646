"""A client of the OCI distribution API v2, for pulls only: manifests and blobs, each digest
verified, each body capped, bearer-token and basic auth, bounded redirects and a total deadline.

Every byte a registry sends is hostile: no response body is ever put into an error message (they
reach status); errors name the step, the HTTP status and our own limits only."""

from __future__ import annotations

import functools
import hashlib
import http.client
import json
import ssl
import time
import urllib.parse
from dataclasses import dataclass, field
from typing import Any

from node_agent.errors import ImagePullFailed
from node_agent.oci.auth import Credentials, parse_challenge
from node_agent.oci.reference import is_loopback

MiB = 1 << 20
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
MANIFEST_TYPES = (OCI_MANIFEST, OCI_INDEX, DOCKER_MANIFEST, DOCKER_LIST)
INDEX_TYPES = (OCI_INDEX, DOCKER_LIST)
_REDIRECTS = (301, 302, 303, 307, 308)
_CHUNK = 64 * 1024


class NotFound(ImagePullFailed):
    """HTTP 404: callers that expect absence (a signature tag) catch it."""


@dataclass(frozen=True)
class Limits:
    manifest_bytes: int = 4 * MiB
    blob_bytes: int = 64 * MiB  # a compressed layer or a config
    elf_bytes: int = 16 * MiB  # the object once unpacked from its layer
    token_bytes: int = 64 * 1024
    redirects: int = 3
    total_seconds: float = 60.0  # one whole fetch: every request of it
    socket_seconds: float = 20.0


@dataclass(frozen=True)
class Descriptor:
    media_type: str
    digest: str
    size: int
    annotations: dict[str, str] = field(default_factory=dict)
    platform: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def parse(cls, raw: object, what: str) -> Descriptor:
        if not isinstance(raw, dict):
            raise ImagePullFailed(f"{what} is not a descriptor object")
        digest, size = raw.get("digest"), raw.get("size")
        if not isinstance(digest, str) or not digest.startswith("sha256:") or len(digest) != 71:
            raise ImagePullFailed(f"{what} has no sha256 digest")
        if not isinstance(size, int) or size < 0:
            raise ImagePullFailed(f"{what} has no size")
        annotations = raw.get("annotations") or {}
        platform = raw.get("platform") or {}
        if not isinstance(annotations, dict) or not isinstance(platform, dict):
            raise ImagePullFailed(f"{what} has malformed annotations or platform")
        return cls(str(raw.get("mediaType", "")), digest, size, annotations, platform)


@dataclass(frozen=True)
class Manifest:
    digest: str  # sha256:<hex> of `data`, verified
    media_type: str
    data: bytes
    body: dict[str, Any]

    @property
    def is_index(self) -> bool:
        return self.media_type in INDEX_TYPES or "manifests" in self.body


def sha256_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@functools.cache
def tls_context() -> ssl.SSLContext:
    """The system's trust store, read once per process (~40 ms each time: not once per pull, and
    not at all for a plain-http registry). A changed CA bundle takes an agent restart."""
    return ssl.create_default_context()


class Registry:
    """One registry host, for one fetch: the deadline covers every request made through it."""

    def __init__(
        self,
        host: str,
        *,
        credentials: Credentials | None = None,
        insecure: bool = False,
        limits: Limits | None = None,
    ) -> None:
        self.host = host
        self.limits = limits or Limits()
        hostname = host[1 : host.index("]")] if host.startswith("[") else host.rsplit(":", 1)[0]
        # Plain http only to this host itself, or where the admin said so.
        self.scheme = "http" if insecure or is_loopback(hostname) else "https"
        self.credentials = credentials
        self.deadline = time.monotonic() + self.limits.total_seconds
        self._authorization: str | None = None

    # -- public ------------------------------------------------------------------------------
    def manifest(self, repository: str, reference: str) -> Manifest:
        _, headers, data = self._get(
            f"/v2/{repository}/manifests/{reference}",
            {"Accept": ", ".join(MANIFEST_TYPES)},
            self.limits.manifest_bytes,
            f"manifest {reference}",
        )
        digest = sha256_digest(data)
        if reference.startswith("sha256:") and digest != reference:
            raise ImagePullFailed(f"manifest {reference} does not match its digest (got {digest})")
        claimed = headers.get("docker-content-digest", "")
        if claimed.startswith("sha256:") and claimed != digest:
            raise ImagePullFailed(
                f"manifest {reference}: the registry's digest header does not match its bytes"
            )
        try:
            body = json.loads(data)
        except (ValueError, UnicodeDecodeError) as err:
            raise ImagePullFailed(f"manifest {reference} is not JSON") from err
        if not isinstance(body, dict):
            raise ImagePullFailed(f"manifest {reference} is not a JSON object")
        media_type = str(body.get("mediaType") or headers.get("content-type", "").split(";")[0].strip())
        return Manifest(digest, media_type, data, body)

    def manifest_or_none(self, repository: str, reference: str) -> Manifest | None:
        """The manifest, or None when the registry has none at `reference` (404)."""
        try:
            return self.manifest(repository, reference)
        except NotFound:
            return None

    def blob(self, repository: str, descriptor: Descriptor, cap: int | None = None) -> bytes:
        cap = self.limits.blob_bytes if cap is None else cap
        what = f"blob {descriptor.digest}"
        if descriptor.size > cap:
            raise ImagePullFailed(f"{what} is {descriptor.size} bytes, over the {cap}-byte limit")
        _, _, data = self._get(f"/v2/{repository}/blobs/{descriptor.digest}", {}, cap, what)
        if len(data) != descriptor.size or sha256_digest(data) != descriptor.digest:
            raise ImagePullFailed(f"{what} does not match its descriptor's digest and size")
        return data

    # -- requests ------------------------------------------------------------------------------
    def _remaining(self, what: str) -> float:
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise ImagePullFailed(f"{what}: the pull took over {self.limits.total_seconds:g} s")
        return min(left, self.limits.socket_seconds)

    def _get(
        self, path: str, headers: dict[str, str], cap: int, what: str
    ) -> tuple[int, dict[str, str], bytes]:
        url = f"{self.scheme}://{self.host}{path}"
        status, response_headers, data = self._send(url, headers, cap, what, authorize=True)
        if status == 401:
            self._authenticate(response_headers.get("www-authenticate"), what)
            status, response_headers, data = self._send(url, headers, cap, what, authorize=True)
            if status == 401:
                raise ImagePullFailed(f"{what}: the registry refused the credentials (HTTP 401)")
        if status == 404:
            raise NotFound(f"{what}: not found in the registry (HTTP 404)")
        if status == 403:
            raise ImagePullFailed(f"{what}: access denied by the registry (HTTP 403)")
        if status != 200:
            raise ImagePullFailed(f"{what}: the registry answered HTTP {status}")
        return status, response_headers, data

    def _send(
        self, url: str, headers: dict[str, str], cap: int, what: str, *, authorize: bool
    ) -> tuple[int, dict[str, str], bytes]:
        """One GET with its redirects; the body is read only for 200 and only up to `cap`."""
        origin = urllib.parse.urlsplit(url).netloc
        for _ in range(self.limits.redirects + 1):
            parts = urllib.parse.urlsplit(url)
            send = dict(headers, **{"User-Agent": "bpfleet-agent"})
            # Credentials go to the registry only, never to wherever it redirects (object storage).
            if authorize and self._authorization and parts.netloc == origin:
                send["Authorization"] = self._authorization
            conn = self._connect(parts, what)
            try:
                target = parts.path + (f"?{parts.query}" if parts.query else "")
                conn.request("GET", target or "/", headers=send)
                response = conn.getresponse()
                response_headers = {k.lower(): v for k, v in response.getheaders()}
                if response.status in _REDIRECTS and "location" in response_headers:
                    url = self._redirect_target(url, response_headers["location"], what)
                    continue
                if response.status != 200:
                    return response.status, response_headers, b""
                return response.status, response_headers, self._read(response, response_headers, cap, what)
            except (OSError, http.client.HTTPException) as err:
                raise ImagePullFailed(f"{what}: cannot reach {parts.netloc} ({type(err).__name__})") from err
            finally:
                conn.close()
        raise ImagePullFailed(f"{what}: more than {self.limits.redirects} redirects")

    def _connect(self, parts: urllib.parse.SplitResult, what: str) -> http.client.HTTPConnection:
        timeout = self._remaining(what)
        if parts.scheme == "https":
            return http.client.HTTPSConnection(parts.netloc, timeout=timeout, context=tls_context())
        if parts.scheme == "http":
            return http.client.HTTPConnection(parts.netloc, timeout=timeout)
        raise ImagePullFailed(f"{what}: redirected to an unsupported scheme")

    def _redirect_target(self, current: str, location: str, what: str) -> str:
        target = urllib.parse.urljoin(current, location)
        parts = urllib.parse.urlsplit(target)
        # No downgrade: plain http only where this registry is itself plain http on the same host.
        if parts.scheme != "https" and not (self.scheme == "http" and parts.netloc == self.host):
            raise ImagePullFailed(f"{what}: the registry redirected to a non-https location")
        return target

    def _read(
        self, response: http.client.HTTPResponse, headers: dict[str, str], cap: int, what: str
    ) -> bytes:
        length = headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > cap:
            raise ImagePullFailed(f"{what} is {int(length)} bytes, over the {cap}-byte limit")
        chunks, total = [], 0
        while True:
            self._remaining(what)
            chunk = response.read(min(_CHUNK, cap + 1 - total))
            if not chunk:
                return b"".join(chunks)
            chunks.append(chunk)
            total += len(chunk)
            if total > cap:
                raise ImagePullFailed(f"{what} is over the {cap}-byte limit")

    def _authenticate(self, header: str | None, what: str) -> None:
        challenge = parse_challenge(header)
        if challenge is None:
            raise ImagePullFailed(f"{what}: the registry asks for authentication without a usable challenge")
        if challenge.scheme == "basic":
            if self.credentials is None:
                raise ImagePullFailed(f"{what}: the registry requires credentials (set imagePullSecret)")
            self._authorization = self.credentials.basic()
            return
        if challenge.scheme != "bearer" or "realm" not in challenge.params:
            raise ImagePullFailed(f"{what}: unsupported registry authentication scheme")
        self._authorization = f"Bearer {self._token(challenge.params, what)}"

    def _token(self, params: dict[str, str], what: str) -> str:
        realm = urllib.parse.urlsplit(params["realm"])
        realm_host = realm.hostname or ""
        if realm.scheme != "https" and not (
            realm.scheme == "http" and (is_loopback(realm_host) or self.scheme == "http")
        ):
            raise ImagePullFailed(f"{what}: the registry's token service is not https")
        query = {k: params[k] for k in ("service", "scope") if k in params}
        url = params["realm"] + ("&" if realm.query else "?") + urllib.parse.urlencode(query)
        headers = {"Accept": "application/json"}
        # The token request carries the basic credentials; nothing is sent without them.
        saved, self._authorization = self._authorization, None
        try:
            conn_headers = dict(headers)
            if self.credentials is not None:
                conn_headers["Authorization"] = self.credentials.basic()
            status, _, data = self._send_token(url, conn_headers, what)
        finally:
            self._authorization = saved
        if status in (401, 403):
            raise ImagePullFailed(
                f"{what}: the registry's token service refused the credentials (HTTP {status})"
            )
        if status != 200:
            raise ImagePullFailed(f"{what}: the registry's token service answered HTTP {status}")
        try:
            body = json.loads(data)
            token = body.get("token") or body.get("access_token")
        except (ValueError, UnicodeDecodeError, AttributeError) as err:
            raise ImagePullFailed(
                f"{what}: the registry's token service answered something other than JSON"
            ) from err
        if not isinstance(token, str) or not token or any(c in token for c in "\r\n"):
            raise ImagePullFailed(f"{what}: the registry's token service returned no token")
        return token

    def _send_token(self, url: str, headers: dict[str, str], what: str) -> tuple[int, dict[str, str], bytes]:
        parts = urllib.parse.urlsplit(url)
        conn = self._connect(parts, what)
        try:
            conn.request("GET", parts.path + (f"?{parts.query}" if parts.query else ""), headers=headers)
            response = conn.getresponse()
            response_headers = {k.lower(): v for k, v in response.getheaders()}
            if response.status != 200:
                return response.status, response_headers, b""
            return (
                200,
                response_headers,
                self._read(response, response_headers, self.limits.token_bytes, what),
            )
        except (OSError, http.client.HTTPException) as err:
            raise ImagePullFailed(f"{what}: cannot reach the token service ({type(err).__name__})") from err
        finally:
            conn.close()
