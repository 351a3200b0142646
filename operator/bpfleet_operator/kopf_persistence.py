"""What kopf keeps on a program object: its finalizer and its delete handler's progress, nothing else.

kopf stores a "last handled configuration" annotation (a copy of the whole spec) for the diffs of
on.create and on.update handlers. The operator has none: programs reach its own work queue through
on.event, and only on.delete is kopf's to run. The annotation would be an extra write of every new
program and of every spec change, contending with the version and node writes on the way to Ready,
and at a 64 KiB source it would double the object in etcd. So kopf keeps no diff base here: every
event looks unchanged to kopf's change detection, which then runs no handler but on.delete.
"""

from __future__ import annotations

from typing import Any

import kopf

from bpfleet_api import names


class NoDiffBase(kopf.DiffBaseStorage):
    """A diff base that is always the object as it is now: "nothing changed", written nowhere."""

    def fetch(self, *, body: kopf.Body) -> Any:
        return self.build(body=body)

    def store(self, *, body: kopf.Body, patch: kopf.Patch, essence: Any) -> None:
        return None


def configure(settings: kopf.OperatorSettings) -> None:
    settings.persistence.finalizer = names.OPERATOR_FINALIZER
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=names.GROUP)
    settings.persistence.diffbase_storage = NoDiffBase()
