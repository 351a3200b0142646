"""A watch cache: LIST once, then WATCH from that resourceVersion, keeping a reduced copy of every
object in memory. Reconciles read it instead of LISTing: on a fleet of thousands of nodes a LIST per
reconcile is what costs the API server and the operator most.

Objects are read as raw JSON (no client models: deserializing thousands of Nodes into models costs
seconds of CPU) and reduced at once to what the operator needs.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Iterator
from typing import Any, Generic, TypeVar

from kubernetes.client import ApiClient
from kubernetes.watch.watch import iter_resp_lines

log = logging.getLogger(__name__)

T = TypeVar("T")
# (event type ADDED/MODIFIED/DELETED, name, before (None when new), after (None when deleted))
Listener = Callable[[str, str, "Any | None", "Any | None"], None]

_PAGE = 500
_WATCH_SECONDS = 240


class Informer(Generic[T]):
    """Objects at `path` (a cluster-wide collection, e.g. /api/v1/nodes) by name, each reduced by
    `reduce`; `listener` hears every change after the first LIST (and the LIST's objects as ADDED)."""

    def __init__(
        self,
        api: ApiClient,
        path: str,
        reduce: Callable[[dict[str, Any]], T],
        listener: Listener | None = None,
        retry_seconds: float = 1.0,
    ) -> None:
        self.api, self.path, self.reduce, self.listener = api, path, reduce, listener
        self.retry_seconds = retry_seconds
        self._items: dict[str, T] = {}
        self._lock = threading.Lock()
        self.synced = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- reads ---------------------------------------------------------------------------------

    def get(self, name: str) -> T | None:
        with self._lock:
            return self._items.get(name)

    def snapshot(self) -> dict[str, T]:
        """A copy of the name -> object map (the objects themselves are shared: never mutate them)."""
        with self._lock:
            return dict(self._items)

    # -- the watch -----------------------------------------------------------------------------

    def start(self) -> Informer[T]:
        self._thread = threading.Thread(target=self._run, name=f"watch {self.path}", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()

    def _get(self, query: list[tuple[str, Any]], stream: bool) -> Any:
        """The raw urllib3 response of a GET (not read yet)."""
        method, url, headers, body, post = self.api.param_serialize(
            "GET",
            self.path,
            query_params=query,
            header_params={"Accept": "application/json"},
            auth_settings=["BearerToken"],
        )
        response = self.api.call_api(
            method, url, headers, body, post, _request_timeout=(_WATCH_SECONDS + 30) if stream else 60
        ).response
        if response.status >= 400:
            message = response.data[:512] if not stream else b""
            response.release_conn()
            raise RuntimeError(f"GET {self.path}: {response.status} {message!r}")
        return response

    def _list(self) -> str:
        listed: dict[str, T] = {}
        token, version = "", ""
        while True:
            query: list[tuple[str, Any]] = [("limit", _PAGE)] + ([("continue", token)] if token else [])
            page = json.loads(self._get(query, stream=False).data)
            for obj in page.get("items") or []:
                listed[obj["metadata"]["name"]] = self.reduce(obj)
            token = page["metadata"].get("continue") or ""
            version = page["metadata"]["resourceVersion"]
            if not token:
                break
        with self._lock:
            before, self._items = self._items, listed
        for name in before.keys() - listed.keys():
            self._tell("DELETED", name, before[name], None)
        for name, obj in listed.items():
            if before.get(name) != obj:
                self._tell("ADDED" if name not in before else "MODIFIED", name, before.get(name), obj)
        self.synced.set()
        return version

    def _events(self, version: str) -> Iterator[dict[str, Any]]:
        query: list[tuple[str, Any]] = [
            ("watch", "true"),
            ("resourceVersion", version),
            ("allowWatchBookmarks", "true"),
            ("timeoutSeconds", _WATCH_SECONDS),
        ]
        response = self._get(query, stream=True)
        try:
            for line in iter_resp_lines(response):
                if self._stop.is_set():
                    return
                yield json.loads(line)
        finally:
            response.release_conn()

    def _run(self) -> None:
        version = ""
        while not self._stop.is_set():
            try:
                if not version:
                    version = self._list()
                for event in self._events(version):
                    kind, obj = event["type"], event["object"]
                    if kind == "ERROR":  # 410 Gone: the version is too old, LIST again
                        version = ""
                        break
                    version = obj["metadata"]["resourceVersion"]
                    if kind != "BOOKMARK":
                        self._apply(kind, obj)
            except Exception:
                if self._stop.is_set():
                    return
                log.warning("watch failed; listing again", extra={"path": self.path}, exc_info=True)
                version = ""
                self._stop.wait(self.retry_seconds)

    def _apply(self, kind: str, obj: dict[str, Any]) -> None:
        name = obj["metadata"]["name"]
        reduced = None if kind == "DELETED" else self.reduce(obj)
        with self._lock:
            before = self._items.get(name)
            if reduced is None:
                self._items.pop(name, None)
            else:
                self._items[name] = reduced
        if before != reduced:
            self._tell(kind, name, before, reduced)

    def _tell(self, kind: str, name: str, before: T | None, after: T | None) -> None:
        if self.listener is None:
            return
        try:
            self.listener(kind, name, before, after)
        except Exception:
            log.exception("watch listener failed", extra={"path": self.path, "object": name})
