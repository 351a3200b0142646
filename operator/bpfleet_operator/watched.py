"""The latest programs and ConfigMaps kopf's watches delivered, so that a reconcile reads them from
memory rather than GET them: on the path from an agent's report to a program's status, each GET is
a round trip to the API server.

Programs: every event's body is kept until the program is deleted. ConfigMaps: only those a
program's source names (the watch sees every ConfigMap of the cluster; their contents stay
unkept). A ConfigMap not seen in an event since a program named it is read with a GET, and that
answer is kept unless an event came meanwhile: the watch is never overwritten by an older read.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from typing import Any

from bpfleet_operator.kinds import ProgramKey

Body = Mapping[str, Any]
# Reads a ConfigMap from the API server: the object, or None when it does not exist.
ConfigMapGet = Callable[[str, str], Body | None]


class ProgramBodies:
    """Program bodies by key, as the watch last showed them (thread-safe)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._bodies: dict[ProgramKey, Body] = {}

    def observed(self, key: ProgramKey, body: Body | None) -> None:
        """An event's body; None when the program was deleted."""
        with self._lock:
            if body is None:
                self._bodies.pop(key, None)
            else:
                self._bodies[key] = body

    def get(self, key: ProgramKey) -> Body | None:
        with self._lock:
            return self._bodies.get(key)


class ConfigMapBodies:
    """The ConfigMaps programs name, by (namespace, name): the watch's, else one GET's."""

    def __init__(self, get: ConfigMapGet) -> None:
        self._get = get
        self._lock = threading.Lock()
        self._named: set[tuple[str, str]] = set()
        self._bodies: dict[tuple[str, str], Body | None] = {}  # None: known not to exist
        self._events: dict[tuple[str, str], int] = {}  # events seen per ConfigMap

    def name(self, wanted: set[tuple[str, str]]) -> None:
        """The ConfigMaps programs' sources name now; the others are forgotten."""
        with self._lock:
            self._named = set(wanted)
            for where in [w for w in self._bodies if w not in self._named]:
                del self._bodies[where]
            self._events = {w: n for w, n in self._events.items() if w in self._named}

    def observed(self, namespace: str, name: str, body: Body | None) -> None:
        """A watch event of a ConfigMap; None when it was deleted."""
        where = (namespace, name)
        with self._lock:
            if where not in self._named:
                return
            self._bodies[where] = body
            self._events[where] = self._events.get(where, 0) + 1

    def read(self, namespace: str, name: str) -> Body | None:
        where = (namespace, name)
        with self._lock:
            if where in self._bodies:
                return self._bodies[where]
            before = self._events.get(where, 0)
        found = self._get(namespace, name)
        with self._lock:
            if where in self._named and where not in self._bodies and self._events.get(where, 0) == before:
                self._bodies[where] = found
        return found
