"""EbpfProgramVersions: created once per content (a version is never changed), and deleted once no
node names them and they are neither a program's current version nor its rollout's previous one.

Which versions a program has is LISTed once per program after the operator starts, then followed
in memory: the operator is their only writer.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Collection
from typing import Any

from kubernetes.client import CustomObjectsApi
from kubernetes.client.exceptions import ApiException

from bpfleet_api import names
from bpfleet_operator import kinds
from bpfleet_operator.kinds import ProgramKey

log = logging.getLogger(__name__)

# Answers to a create that retrying the same create cannot change: an invalid object, or a
# namespace that does not exist (whose creation brings the program back).
_REFUSED = (400, 404, 422)


class VersionRefused(Exception):
    """The API server refused a version object; the message says why."""


def _api_message(e: ApiException) -> str:
    try:
        return str(json.loads(e.body or "")["message"])
    except (ValueError, KeyError, TypeError):
        return f"{e.status} {e.reason}"


class VersionStore:
    def __init__(self, custom: CustomObjectsApi) -> None:
        self.custom = custom
        self._lock = threading.Lock()
        self._known: dict[ProgramKey, set[str]] = {}  # program -> its version objects' names

    def ensure(self, key: ProgramKey, body: dict[str, Any]) -> None:
        """Creates the version object unless it exists."""
        name = body["metadata"]["name"]
        self._load(key)
        with self._lock:
            if name in self._known[key]:
                return
        try:
            self.custom.create_namespaced_custom_object(
                names.GROUP, names.VERSION, body["metadata"]["namespace"], names.VERSION_PLURAL, body
            )
            log.info("created version", extra={"program": "/".join(key), "version": name})
        except ApiException as e:
            if e.status in _REFUSED:
                where = f"{body['metadata']['namespace']}/{name}"
                raise VersionRefused(f"the API server refused version {where}: {_api_message(e)}") from e
            if e.status != 409:  # same name, same content: it is there already
                raise
        with self._lock:
            self._known[key].add(name)

    def collect(self, key: ProgramKey, keep: Collection[str]) -> None:
        """Deletes the program's versions that are not in `keep`."""
        self._load(key)
        with self._lock:
            doomed = sorted(self._known[key] - set(keep))
        namespace = kinds.of(key).node_namespace(key)
        for name in doomed:
            log.info("deleting unused version", extra={"program": "/".join(key), "version": name})
            try:
                self.custom.delete_namespaced_custom_object(
                    names.GROUP, names.VERSION, namespace, names.VERSION_PLURAL, name
                )
            except ApiException as e:
                if e.status != 404:
                    raise
            with self._lock:
                self._known[key].discard(name)

    def forget(self, key: ProgramKey) -> None:
        """The program is gone: garbage collection removes its versions with it."""
        with self._lock:
            self._known.pop(key, None)

    def _load(self, key: ProgramKey) -> None:
        with self._lock:
            if key in self._known:
                return
        kind = kinds.of(key)
        listed = self.custom.list_namespaced_custom_object(
            names.GROUP,
            names.VERSION,
            kind.node_namespace(key),
            names.VERSION_PLURAL,
            label_selector=f"{kind.label}={names.label_value(key.name)}",
        )
        # By spec too: a long name's label value is a hash that another name could be made to equal.
        found = {
            v["metadata"]["name"]
            for v in listed["items"]
            if (v.get("spec") or {}).get("programKind") == key.kind
            and (v.get("spec") or {}).get("programName") == key.name
        }
        with self._lock:
            self._known.setdefault(key, set()).update(found)
