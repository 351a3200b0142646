"""A thin, typed client of the Kubernetes API: JSON over urllib3, for the few calls the agent makes
(and the watch caches of both components). The agent never imports the `kubernetes` package: its
models and their dependencies cost tens of MiB of resident memory on every node.

Every request has a read timeout (BPFLEET_API_TIMEOUT_SECONDS, kube_timeouts.py); a watch stream
names its own (informer.py)."""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path
from typing import Any
from urllib.parse import quote

import urllib3

from bpfleet_api import kubeconfig
from bpfleet_api.errors import ApiError, Expired
from bpfleet_api.kube_timeouts import CONNECT_SECONDS, request_seconds
from bpfleet_api.kubeconfig import Endpoint

MERGE_PATCH = "application/merge-patch+json"
Query = dict[str, str]


class RestClient:
    def __init__(self, endpoint: Endpoint, timeout: float | None = None, connections: int = 8) -> None:
        self.endpoint = endpoint
        self.timeout = urllib3.Timeout(connect=CONNECT_SECONDS, read=timeout or request_seconds())
        # Each open watch holds a connection: room for the watches and the calls beside them. A
        # call beyond `connections` at once gets a connection that is closed after it: a new TLS
        # handshake for the next.
        kwargs: dict[str, Any] = {"retries": False, "maxsize": connections}
        if endpoint.ssl_context is not None:
            kwargs["ssl_context"] = endpoint.ssl_context
        self._pool = urllib3.PoolManager(**kwargs)
        self._token_lock = threading.Lock()
        self._token, self._token_stamp = endpoint.token, None  # stamp: (mtime, size) of token_file

    @classmethod
    def load(cls, kubeconfig_path: str | None = None, connections: int = 8) -> RestClient:
        return cls(kubeconfig.load(kubeconfig_path), connections=connections)

    # -- verbs ---------------------------------------------------------------------------------

    def get(self, path: str, query: Query | None = None, accept: str = "application/json") -> dict[str, Any]:
        """`accept` may ask for another JSON form: metadata only (as=PartialObjectMetadataList), say."""
        return self._json("GET", path, query, accept=accept)

    def create(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        return self._json("POST", path, None, body, "application/json")

    def merge_patch(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        return self._json("PATCH", path, None, body, MERGE_PATCH)

    def delete(self, path: str) -> dict[str, Any]:
        return self._json("DELETE", path)

    def stream(self, path: str, query: Query, read_seconds: float) -> urllib3.BaseHTTPResponse:
        """A GET whose body is not read yet (a watch): the caller reads it and releases it. The
        read timeout bounds the silence between two reads."""
        timeout = urllib3.Timeout(connect=CONNECT_SECONDS, read=read_seconds)
        response = self._send("GET", path, query, None, None, timeout, preload=False)
        if response.status >= 400:
            data = response.read()
            response.release_conn()
            raise _error(response.status, data)
        return response

    # -- plumbing ------------------------------------------------------------------------------

    def _json(
        self,
        method: str,
        path: str,
        query: Query | None = None,
        body: dict[str, Any] | None = None,
        content_type: str | None = None,
        accept: str = "application/json",
    ) -> dict[str, Any]:
        response = self._send(method, path, query, body, content_type, self.timeout, True, accept)
        if response.status >= 400:
            raise _error(response.status, response.data)
        found: dict[str, Any] = json.loads(response.data) if response.data else {}
        return found

    def _send(
        self,
        method: str,
        path: str,
        query: Query | None,
        body: dict[str, Any] | None,
        content_type: str | None,
        timeout: urllib3.Timeout,
        preload: bool,
        accept: str = "application/json",
    ) -> urllib3.BaseHTTPResponse:
        headers = {"Accept": accept}
        token = self._bearer()
        if token:
            headers["Authorization"] = f"Bearer {token}"
        if content_type:
            headers["Content-Type"] = content_type
        try:
            return self._pool.request(
                method,
                self.endpoint.server + path,
                fields=query if method == "GET" else None,
                body=None if body is None else json.dumps(body).encode(),
                headers=headers,
                timeout=timeout,
                preload_content=preload,
                redirect=False,
            )
        except urllib3.exceptions.ReadTimeoutError:
            # An answer that never came says the server (or the path to it) is gone: the other
            # kept-alive connections likely are too.
            self.drop_idle_connections()
            raise

    def drop_idle_connections(self) -> None:
        """Closes the kept-alive connections, so that the next calls open new ones: each dead one
        would cost a call a whole request timeout. Connections in use (watches') are left to
        their own reads."""
        self._pool.clear()

    def _bearer(self) -> str | None:
        """The token, read again from its file whenever the file changed (kubelet rotates it)."""
        file = self.endpoint.token_file
        if file is None:
            return self._token
        try:
            info = os.stat(file)
        except OSError:
            return self._token  # between two rotations: keep the last one
        stamp = (info.st_mtime_ns, info.st_size)
        with self._token_lock:
            if stamp != self._token_stamp:
                self._token, self._token_stamp = Path(file).read_text().strip(), stamp
            return self._token


def _error(status: int, data: bytes) -> ApiError:
    text = data.decode(errors="replace")
    try:
        reason = str(json.loads(text).get("message") or text)
    except (ValueError, AttributeError):
        reason = text
    if status == 410:
        return Expired(reason[:500])
    return ApiError(status, reason[:500], text[:2000])


def object_path(
    group: str | None, version: str, plural: str, name: str = "", namespace: str | None = None
) -> str:
    """/api/v1/... for the core group (None), /apis/<group>/<version>/... otherwise."""
    path = f"/api/{version}" if group is None else f"/apis/{group}/{version}"
    if namespace is not None:
        path += f"/namespaces/{quote(namespace, safe='')}"
    path += f"/{plural}"
    return path + (f"/{quote(name, safe='')}" if name else "")
