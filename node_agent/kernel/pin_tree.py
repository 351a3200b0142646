"""The directories of the pin tree that compiles and the pass share.

load() runs on compile-pool threads while the pass attaches, detaches and unloads. A version being
built (its staging pins, its program and namespace directories) is not the pass's to tidy away, and
tidying and creating directories take turns under one lock.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path

from node_agent.kernel.publish import STAGING_PREFIX

log = logging.getLogger(__name__)


class PinTree:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._building: set[Path] = set()

    @contextlib.contextmanager
    def building(self, version_dir: Path) -> Iterator[None]:
        """Around one compile of version_dir: its parents exist and stay until it is published or
        failed; on failure the parents it left empty go."""
        with self._lock:
            self._building.add(version_dir)
            version_dir.parent.mkdir(parents=True, exist_ok=True)
        try:
            yield
        except BaseException:
            with self._lock:
                self._building.discard(version_dir)
                self._remove_empty_parents(version_dir)
            raise
        with self._lock:
            self._building.discard(version_dir)

    def remove_unfinished(self, staging: Path) -> None:
        """Staging pins no compile is publishing: a worker died between pinning and publishing."""
        with self._lock:
            if staging.with_name(staging.name.removeprefix(STAGING_PREFIX)) in self._building:
                return  # being published by a compile right now
            log.info("removing unfinished pins", extra={"path": str(staging)})
            shutil.rmtree(staging, ignore_errors=True)
            self._remove_empty_parents(staging)  # its program may have nothing else here

    def removed(self, version_dir: Path) -> None:
        """After a version's directory was removed: its program and namespace directories too,
        when nothing else lives there."""
        with self._lock:
            self._remove_empty_parents(version_dir)

    def _remove_empty_parents(self, version_dir: Path) -> None:
        busy = {p.parent for p in self._building} | {p.parent.parent for p in self._building}
        for parent in (version_dir.parent, version_dir.parent.parent):
            if parent in busy:
                break  # a compile is about to publish into it
            try:
                parent.rmdir()
            except OSError:
                break  # not empty: other versions or programs live there
