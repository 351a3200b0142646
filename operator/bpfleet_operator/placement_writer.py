"""Writes each program's EbpfProgramPlacement (placement.py): created owned by the program, so that
garbage collection removes it with the program, its spec merge-patched when the program's version
or nodeSelector changes, deleted when the program is. One write per change of a program, never one
per node; none when the watch (or the last write, while the watch lags it) shows what should be.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping
from typing import Any

from bpfleet_api import names
from bpfleet_api.errors import ApiError
from bpfleet_api.rest import RestClient, object_path
from bpfleet_operator import kinds
from bpfleet_operator.cluster_cache import ClusterCache
from bpfleet_operator.kinds import ProgramKey
from bpfleet_operator.placement import Spec

log = logging.getLogger(__name__)


def path(key: ProgramKey, name: str = "") -> str:
    namespace = kinds.of(key).node_namespace(key)
    return object_path(names.GROUP, names.VERSION, names.PLACEMENT_PLURAL, name, namespace)


class PlacementWriter:
    def __init__(self, rest: RestClient, cache: ClusterCache) -> None:
        self.rest, self.cache = rest, cache
        # program -> (spec written, None once deleted; the resourceVersion the watch showed then)
        self._written: dict[ProgramKey, tuple[Spec | None, str | None]] = {}
        self._lock = threading.Lock()  # a reconcile and a deletion's teardown may meet
        self.writes = 0

    def seen(self, key: ProgramKey) -> Spec | None:
        """The placement as the operator's watch shows it."""
        found = self.cache.placement(key)
        return found.spec if found is not None else None

    def placed(self, key: ProgramKey) -> Spec | None:
        """The placement as last written, while the watch has not shown that write yet; else as seen."""
        found = self.cache.placement(key)
        with self._lock:
            written = self._written.get(key)
        if written is not None and written[1] == (found.resource_version if found else None):
            return written[0]
        return found.spec if found is not None else None

    def write(self, key: ProgramKey, program: Mapping[str, Any], spec: Spec) -> None:
        with self._lock:
            found = self.cache.placement(key)
            seen = found.resource_version if found else None
            if found is not None and found.spec == spec:
                self._written.pop(key, None)
                return
            written = self._written.get(key)
            if written is not None and written[1] == seen and written[0] == spec:
                return  # written already; the watch has not shown it yet
            exists = found is not None or (written is not None and written[0] is not None)
            if exists:
                self._patch(key, program, spec)
            else:
                self._create(key, program, spec)
            self._written[key] = (spec, seen)
            self.writes += 1

    def remove(self, key: ProgramKey) -> None:
        """Deletes the program's placement: every node whose spec does not name it unloads it."""
        with self._lock:
            found = self.cache.placement(key)
            seen = found.resource_version if found else None
            written = self._written.get(key)
            if written is not None and written[0] is None and written[1] == seen:
                return  # deleted already; the watch has not shown it yet
            if found is None and (written is None or written[0] is None):
                self._written.pop(key, None)
                return
            log.info("removing placement", extra={"program": "/".join(key)})
            try:
                self.rest.delete(path(key, names.placement_name(key.kind, key.name)))
            except ApiError as e:
                if e.status != 404:
                    raise
            self._written[key] = (None, seen)
            self.writes += 1

    def _create(self, key: ProgramKey, program: Mapping[str, Any], spec: Spec) -> None:
        kind, meta = kinds.of(key), program["metadata"]
        body = {
            "apiVersion": names.API_VERSION,
            "kind": names.PLACEMENT_KIND,
            "metadata": {
                "name": names.placement_name(key.kind, key.name),
                "namespace": kind.node_namespace(key),
                "labels": {kind.label: names.label_value(key.name)},
                "ownerReferences": [
                    {
                        "apiVersion": names.API_VERSION,
                        "kind": key.kind,
                        "name": key.name,
                        "uid": meta["uid"],
                        "controller": True,
                    }
                ],
            },
            "spec": spec,
        }
        log.info("placing program", extra={"program": "/".join(key), "version": spec["version"]})
        try:
            self.rest.create(path(key), body)
        except ApiError as e:
            if e.status != 409:
                raise
            self._patch(key, program, spec)  # made before this operator's watch showed it

    def _patch(self, key: ProgramKey, program: Mapping[str, Any], spec: Spec) -> None:
        log.info("moving placement", extra={"program": "/".join(key), "version": spec["version"]})
        try:
            # The whole spec: a merge patch of nodeSelector null removes a selector that went.
            patch = {"spec": {**spec, "nodeSelector": spec.get("nodeSelector")}}
            self.rest.merge_patch(path(key, names.placement_name(key.kind, key.name)), patch)
        except ApiError as e:
            if e.status != 404:
                raise
            self._create(key, program, spec)  # deleted meanwhile (by hand, say)
