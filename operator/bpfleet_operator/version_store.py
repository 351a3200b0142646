"""EbpfProgramVersions: created once per content (a version is never changed), and deleted once no
node names them and they are neither a program's current version nor its rollout's previous one.

Which versions each program has is LISTed once after the operator starts, for every program at
once and metadata only (the sources stay on the server), then followed in memory: the operator is
their only writer. A program created after that has none but those it makes: a version of an
older program of the same name is that program's, and garbage collection removes it.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Collection, Iterable, Mapping
from typing import Any

from kubernetes.client import CustomObjectsApi
from kubernetes.client.exceptions import ApiException

from bpfleet_api import names
from bpfleet_api.rest import RestClient, object_path
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


# Every version's metadata (name, namespace, ownerReferences), from wherever they are listed.
ListVersions = Callable[[], Iterable[Mapping[str, Any]]]
_METADATA_LIST = "application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1"
_PAGE = "500"


def metadata_lister(api: RestClient) -> ListVersions:
    """Lists every EbpfProgramVersion's metadata in the cluster, a page at a time."""

    def listed() -> Iterable[Mapping[str, Any]]:
        path = object_path(names.GROUP, names.VERSION, names.VERSION_PLURAL)
        query = {"limit": _PAGE}
        while True:
            page = api.get(path, query, accept=_METADATA_LIST)
            for item in page.get("items") or []:
                yield item.get("metadata") or {}
            more = (page.get("metadata") or {}).get("continue")
            if not more:
                return
            query = {"limit": _PAGE, "continue": more}

    return listed


def owner_key(meta: Mapping[str, Any]) -> ProgramKey | None:
    """The program a version belongs to: its controller owner (the operator sets it), exact where
    the version's label may be a name's hash."""
    for owner in meta.get("ownerReferences") or []:
        if owner.get("controller") and owner.get("apiVersion") == names.API_VERSION:
            kind = next((k for k in kinds.ALL if k.kind == owner.get("kind")), None)
            if kind is not None and isinstance(owner.get("name"), str):
                return kind.key(meta.get("namespace"), owner["name"])
    return None


class VersionStore:
    def __init__(self, custom: CustomObjectsApi, list_versions: ListVersions) -> None:
        self.custom, self.list_versions = custom, list_versions
        self._lock = threading.Lock()
        self._known: dict[ProgramKey, set[str]] = {}  # program -> its version objects' names
        self._loaded = False

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
            if self._loaded:
                self._known.setdefault(key, set())
                return
        found: dict[ProgramKey, set[str]] = {}
        for meta in self.list_versions():
            owner = owner_key(meta)
            if owner is not None and kinds.of(owner).node_namespace(owner) == meta.get("namespace"):
                found.setdefault(owner, set()).add(str(meta["name"]))
        with self._lock:
            if not self._loaded:
                for owner, versions in found.items():
                    self._known.setdefault(owner, set()).update(versions)
                self._loaded = True
            self._known.setdefault(key, set())
