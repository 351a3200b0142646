"""List-then-watch of one kind of object, with server-side selectors, into an in-memory cache.

The agent reconciles the whole node on any change, so the informer only keeps the latest objects
and rings a bell; it never hands single events to business logic.

Broken watches, and what the informer does about each:

- The server ends a watch after `timeoutSeconds` (WatchTiming.watch_seconds): watch again at once
  from the last resourceVersion seen (events and bookmarks alike), so nothing is lost or replayed.
- Expired (HTTP 410, or an ERROR event with code 410): that version is gone, list again.
- Stalled (connection open, nothing arrives): a healthy watch is never silent for longer than its
  `timeoutSeconds` (the server sends a bookmark just before it ends it, and then closes it), so
  `stall_seconds` = watch_seconds + grace without a byte means it is dead. The read timeout ends it,
  and the informer watches again from its last version on a new connection.
- Any other failure (connection refused or reset, 5xx): retry from the last version after a delay
  with full jitter (bpfleet_api.backoff), so a fleet does not stampede an API server coming back.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from kubernetes.client import ApiClient
from kubernetes.client.exceptions import ApiException
from urllib3.exceptions import ReadTimeoutError

from bpfleet_api.backoff import FullJitter

log = logging.getLogger(__name__)

_CONNECT_SECONDS = 5.0
_LIST_SECONDS = 30.0


@dataclass(frozen=True)
class WatchTiming:
    """How long one watch lasts and when silence means a stall (env BPFLEET_WATCH_SECONDS).
    With the defaults, a stalled watch is noticed within 35 s of its last byte."""

    watch_seconds: int = 30
    grace: float = 5.0
    retry_base: float = 0.5
    retry_cap: float = 4.0  # after an outage, a fleet's retries spread evenly over this many seconds

    @property
    def stall_seconds(self) -> float:
        return self.watch_seconds + self.grace

    @classmethod
    def from_env(cls) -> WatchTiming:
        seconds = int(os.environ.get("BPFLEET_WATCH_SECONDS", cls.watch_seconds))
        return cls(watch_seconds=max(seconds, 1))


@dataclass
class WatchStats:
    """What happened to the informer's watches, for logs, tests and the fault figures."""

    lists: int = 0
    watches: int = 0
    expired: int = 0
    stalls: int = 0
    failures: int = 0
    last_stall_at: float | None = None  # time.monotonic() of the last stall noticed
    last_list_at: float | None = None


class Expired(Exception):
    """The server no longer has the resourceVersion the watch resumed from."""


class Stalled(Exception):
    """The watch's connection stayed silent for longer than a healthy watch ever is."""


class Informer(threading.Thread):
    def __init__(
        self,
        api: ApiClient,
        path: str,
        on_change: Callable[[], None],
        label_selector: str | None = None,
        field_selector: str | None = None,
        timing: WatchTiming | None = None,
        since: str | None = None,
    ) -> None:
        """`since` starts with a watch from that resourceVersion instead of a list (as after a
        long disconnection; tests use it to meet a real 410). The cache is synced by a list only."""
        super().__init__(name=f"informer {path}", daemon=True)
        self.api, self.path, self.on_change = api, path, on_change
        self.selectors = {
            k: v for k, v in (("labelSelector", label_selector), ("fieldSelector", field_selector)) if v
        }
        self.timing = timing or WatchTiming.from_env()
        self.stats = WatchStats()
        self.synced = threading.Event()
        self._lock = threading.Lock()
        self._objects: dict[str, dict[str, Any]] = {}
        self._stopping = threading.Event()
        self._version = since
        self._jitter = FullJitter(self.timing.retry_base, self.timing.retry_cap)
        self._failures = 0  # in a row, since the last list or watch the server accepted

    def objects(self) -> list[dict[str, Any]]:
        with self._lock:
            return list(self._objects.values())

    def stop(self) -> None:
        self._stopping.set()

    def run(self) -> None:
        while not self._stopping.is_set():
            delay = 0.0
            try:
                if self._version is None:
                    self._version = self._list()
                self._version = self._watch(self._version)
                if not self.synced.is_set():
                    self._version = None  # resumed with an empty cache: only a list fills it
            except Expired as e:
                # Relisting is what a whole fleet does after a restart: spread it a little too.
                self.stats.expired += 1
                log.info("watch expired, listing again", extra={"path": self.path, "error": str(e)})
                self._version = None
                delay = self._jitter.delay(0)
            except Stalled:
                # Only this connection is dead: watch again at once, on a new one, from the same version.
                self.stats.stalls += 1
                self.stats.last_stall_at = time.monotonic()
                log.warning(
                    "watch stalled, watching again",
                    extra={"path": self.path, "silentSeconds": self.timing.stall_seconds},
                )
            except Exception as e:
                if self._stopping.is_set():
                    break  # the connection ended with the informer: nothing to retry
                self.stats.failures += 1
                self._failures += 1
                delay = self._jitter.delay(self._failures)
                log.warning(
                    "watch failed, retrying",
                    extra={"path": self.path, "error": str(e)[:300], "retryIn": round(delay, 2)},
                )
            if delay:
                self._stopping.wait(delay)

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
        if response.status == 410:
            raise Expired(response.data.decode(errors="replace")[:300])
        if response.status >= 400:
            raise ApiException(status=response.status, reason=response.data.decode(errors="replace")[:500])
        return response

    def _list(self) -> str:
        body = json.loads(self._request({}, (_CONNECT_SECONDS, _LIST_SECONDS)).data)
        with self._lock:
            self._objects = {o["metadata"]["uid"]: o for o in body.get("items", [])}
        self.stats.lists += 1
        self.stats.last_list_at = time.monotonic()
        self._failures = 0
        self.synced.set()
        self.on_change()
        return str(body["metadata"]["resourceVersion"])

    def _watch(self, version: str) -> str:
        """Follows changes from a resource version; returns the last one seen when the server ends it."""
        params = {
            "watch": "1",
            "resourceVersion": version,
            "allowWatchBookmarks": "true",
            "timeoutSeconds": str(self.timing.watch_seconds),
        }
        # The read timeout bounds the silence between two reads of the stream: the stall bound.
        response = self._request(params, (_CONNECT_SECONDS, self.timing.stall_seconds))
        self.stats.watches += 1
        self._failures = 0
        buffer = b""
        try:
            for chunk in response.stream(4096, decode_content=True):
                if self._stopping.is_set():
                    break
                buffer += chunk
                while b"\n" in buffer:
                    line, buffer = buffer.split(b"\n", 1)
                    if line.strip():
                        version = self._apply(json.loads(line)) or version
        except ReadTimeoutError as e:
            raise Stalled(str(e)) from e
        finally:
            response.release_conn()
        return version

    def _apply(self, event: dict[str, Any]) -> str | None:
        kind, obj = event.get("type"), event.get("object") or {}
        if kind == "ERROR":
            if obj.get("code") == 410:
                raise Expired(str(obj.get("message")))
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
