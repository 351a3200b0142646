"""List-then-watch of one kind of object, with server-side selectors, into an in-memory cache.

The agent reconciles the whole node on any change, so the informer only keeps the latest objects
and rings a bell; it never hands single events to business logic.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from kubernetes.client import ApiClient
from kubernetes.client.exceptions import ApiException

log = logging.getLogger(__name__)

_WATCH_SECONDS = 240


class Informer(threading.Thread):
    def __init__(
        self,
        api: ApiClient,
        path: str,
        on_change: Callable[[], None],
        label_selector: str | None = None,
        field_selector: str | None = None,
    ) -> None:
        super().__init__(name=f"informer {path}", daemon=True)
        self.api, self.path, self.on_change = api, path, on_change
        self.selectors = {
            k: v for k, v in (("labelSelector", label_selector), ("fieldSelector", field_selector)) if v
        }
        self.synced = threading.Event()
        self._lock = threading.Lock()
        self._objects: dict[str, dict[str, Any]] = {}
        self._stop = threading.Event()

    def objects(self) -> list[dict[str, Any]]:
        with self._lock:
            return list(self._objects.values())

    def stop(self) -> None:
        self._stop.set()

    def run(self) -> None:
        version: str | None = None
        while not self._stop.is_set():
            try:
                if version is None:
                    version = self._list()
                version = self._watch(version)
            except Exception as e:
                if self._stop.is_set():
                    break  # the connection ended with the informer: nothing to retry
                # Expired resource versions (410) and broken connections alike: start from a list.
                log.warning("watch failed, listing again", extra={"path": self.path, "error": str(e)})
                version = None
                self._stop.wait(1.0)

    def _request(self, params: dict[str, Any], timeout: float | tuple[float, float]) -> Any:
        """A GET whose body is read raw: lists and watch streams alike, as plain dicts."""
        method, url, headers, body, _ = self.api.param_serialize(
            "GET",
            self.path,
            query_params=list({**self.selectors, **params}.items()),
            header_params={"Accept": "application/json"},
            auth_settings=["BearerToken"],
        )
        response = self.api.call_api(method, url, headers, body, _request_timeout=timeout).response
        if response.status >= 400:
            raise ApiException(status=response.status, reason=response.data.decode(errors="replace")[:500])
        return response

    def _list(self) -> str:
        body = json.loads(self._request({}, 30).data)
        with self._lock:
            self._objects = {o["metadata"]["uid"]: o for o in body.get("items", [])}
        self.synced.set()
        self.on_change()
        return str(body["metadata"]["resourceVersion"])

    def _watch(self, version: str) -> str:
        """Follows changes from a resource version; returns the last one seen when the server ends it."""
        params = {
            "watch": "1",
            "resourceVersion": version,
            "allowWatchBookmarks": "true",
            "timeoutSeconds": str(_WATCH_SECONDS),
        }
        response = self._request(params, (10, _WATCH_SECONDS + 30))
        buffer = b""
        try:
            for chunk in response.stream(4096, decode_content=True):
                if self._stop.is_set():
                    break
                buffer += chunk
                while b"\n" in buffer:
                    line, buffer = buffer.split(b"\n", 1)
                    if line.strip():
                        version = self._apply(json.loads(line)) or version
        finally:
            response.release_conn()
        return version

    def _apply(self, event: dict[str, Any]) -> str | None:
        kind, obj = event.get("type"), event.get("object") or {}
        if kind == "ERROR":
            raise ApiException(status=obj.get("code"), reason=obj.get("message"))
        version = obj.get("metadata", {}).get("resourceVersion")
        if kind == "BOOKMARK":
            return version
        uid = obj["metadata"]["uid"]
        with self._lock:
            if kind == "DELETED":
                self._objects.pop(uid, None)
            else:
                self._objects[uid] = obj
        self.on_change()
        return version


def wait_synced(informers: list[Informer], stop: threading.Event, timeout: float = 60.0) -> bool:
    deadline = time.monotonic() + timeout
    while not stop.is_set() and time.monotonic() < deadline:
        if all(i.synced.is_set() for i in informers):
            return True
        stop.wait(0.1)
    return all(i.synced.is_set() for i in informers)
