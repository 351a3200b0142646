"""List-then-watch of one collection into an in-memory cache, shared by the agent and the operator.

Objects are read as raw JSON and kept as `reduce` makes them (the whole object by default). Each
change after a list is told to the `listener` (kind, key, before, after) when the reduced object
differs, and `on_change` rings after every list and applied event. Keys are names, namespace/name
for namespaced objects.

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
from typing import Any, Generic, TypeVar

from urllib3.exceptions import ProtocolError, ReadTimeoutError

from bpfleet_api.backoff import FullJitter
from bpfleet_api.errors import ApiError, Expired
from bpfleet_api.rest import RestClient

log = logging.getLogger(__name__)

T = TypeVar("T")
# (event type ADDED/MODIFIED/DELETED, key, before (None when new), after (None when deleted))
Listener = Callable[[str, str, "Any | None", "Any | None"], None]

_PAGE = 500


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


class Stalled(Exception):
    """The watch's connection stayed silent for longer than a healthy watch ever is."""


def _whole(obj: dict[str, Any]) -> Any:
    return obj


def key_of(obj: dict[str, Any]) -> str:
    meta = obj["metadata"]
    return f"{meta['namespace']}/{meta['name']}" if meta.get("namespace") else str(meta["name"])


class Informer(Generic[T]):
    def __init__(
        self,
        api: RestClient,
        path: str,
        reduce: Callable[[dict[str, Any]], T] = _whole,
        listener: Listener | None = None,
        on_change: Callable[[], None] | None = None,
        label_selector: str | None = None,
        field_selector: str | None = None,
        timing: WatchTiming | None = None,
        since: str | None = None,
    ) -> None:
        """`since` starts with a watch from that resourceVersion instead of a list (as after a
        long disconnection; tests use it to meet a real 410). The cache is synced by a list only."""
        self.api, self.path, self.reduce = api, path, reduce
        self.listener, self.on_change = listener, on_change
        self.selectors = {
            k: v for k, v in (("labelSelector", label_selector), ("fieldSelector", field_selector)) if v
        }
        self.timing = timing or WatchTiming.from_env()
        self.stats = WatchStats()
        self.synced = threading.Event()
        self._lock = threading.Lock()
        self._items: dict[str, T] = {}
        self._stopping = threading.Event()
        self._version = since
        self._jitter = FullJitter(self.timing.retry_base, self.timing.retry_cap)
        self._failures = 0  # in a row, since the last list or watch the server accepted
        self._thread: threading.Thread | None = None

    # -- reads ---------------------------------------------------------------------------------

    def get(self, key: str) -> T | None:
        with self._lock:
            return self._items.get(key)

    def snapshot(self) -> dict[str, T]:
        """A copy of the key -> object map (the objects themselves are shared: never mutate them)."""
        with self._lock:
            return dict(self._items)

    def objects(self) -> list[T]:
        with self._lock:
            return list(self._items.values())

    # -- the thread ----------------------------------------------------------------------------

    def start(self) -> Informer[T]:
        self._thread = threading.Thread(target=self.run, name=f"informer {self.path}", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()

    def join(self, timeout: float | None = None) -> None:
        if self._thread is not None:
            self._thread.join(timeout)

    def is_alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

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
                # This connection is dead: watch again at once, on a new one, from the same version.
                # The idle ones kept alive beside it are suspect too: each would cost the next call
                # on it a whole request timeout.
                self.api.drop_idle_connections()
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

    # -- list and watch ------------------------------------------------------------------------

    def _list(self) -> str:
        listed: dict[str, T] = {}
        token, version = "", ""
        while True:
            query = {**self.selectors, "limit": str(_PAGE), **({"continue": token} if token else {})}
            page = self.api.get(self.path, query)
            for obj in page.get("items") or []:
                listed[key_of(obj)] = self.reduce(obj)
            token = page["metadata"].get("continue") or ""
            version = str(page["metadata"]["resourceVersion"])
            if not token:
                break
        with self._lock:
            before, self._items = self._items, listed
        self.stats.lists += 1
        self.stats.last_list_at = time.monotonic()
        self._failures = 0
        self.synced.set()
        for key in before.keys() - listed.keys():
            self._tell("DELETED", key, before[key], None)
        for key, obj in listed.items():
            if before.get(key) != obj:
                self._tell("ADDED" if key not in before else "MODIFIED", key, before.get(key), obj)
        self._ring()
        return version

    def _watch(self, version: str) -> str:
        """Follows changes from a resource version; returns the last one seen when the server ends it."""
        query = {
            **self.selectors,
            "watch": "1",
            "resourceVersion": version,
            "allowWatchBookmarks": "true",
            "timeoutSeconds": str(self.timing.watch_seconds),
        }
        # The read timeout bounds the silence between two reads of the stream: the stall bound.
        response = self.api.stream(self.path, query, self.timing.stall_seconds)
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
        except ProtocolError as e:
            # urllib3 wraps a read timeout inside a chunked body as a protocol error.
            if isinstance(e.__context__, TimeoutError) or "timed out" in str(e):
                raise Stalled(str(e)) from e
            raise
        finally:
            response.release_conn()
        return version

    def _apply(self, event: dict[str, Any]) -> str | None:
        kind, obj = event.get("type"), event.get("object") or {}
        if kind == "ERROR":
            if obj.get("code") == 410:
                raise Expired(str(obj.get("message")))
            raise ApiError(int(obj.get("code") or 500), str(obj.get("message")))
        version = obj.get("metadata", {}).get("resourceVersion")
        if kind == "BOOKMARK":
            return version
        key = key_of(obj)
        reduced = None if kind == "DELETED" else self.reduce(obj)
        with self._lock:
            before = self._items.get(key)
            if reduced is None:
                self._items.pop(key, None)
            else:
                self._items[key] = reduced
        if before != reduced:
            self._tell(str(kind), key, before, reduced)
        self._ring()
        return version

    def _tell(self, kind: str, key: str, before: T | None, after: T | None) -> None:
        if self.listener is None:
            return
        try:
            self.listener(kind, key, before, after)
        except Exception:
            log.exception("watch listener failed", extra={"path": self.path, "object": key})

    def _ring(self) -> None:
        if self.on_change is not None:
            self.on_change()


def wait_synced(informers: list[Informer[Any]], stop: threading.Event, timeout: float = 60.0) -> bool:
    deadline = time.monotonic() + timeout
    while not stop.is_set() and time.monotonic() < deadline:
        if all(i.synced.is_set() for i in informers):
            return True
        stop.wait(0.1)
    return all(i.synced.is_set() for i in informers)
