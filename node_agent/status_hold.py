"""When the agent holds a node's status back rather than write it in the pass that found it.

Two kinds of news may wait; any other is written at once, and takes the held news with it:

- builds queued, for QUEUED_REPORT_SECONDS from when they were first held: a quick build (a
  bytecode load, tens of milliseconds) is then one write, attached, not queued and then attached;
- pods coming and going (their counts, entries between PodsPending and Attached): at most one such
  write per POD_REPORT_SECONDS, the first after a quiet one at once. A node's status is one object
  of all its programs, and the operator follows each of its writes with the status of every program
  it changed: without the hold, pod churn on a node of 50 programs is a write of the node's whole
  state and 50 program status writes per pod event, which the API server pays for, and the CPU the
  fast path attaches with pays for on a small node. `kubectl get ebpf` shows pods' counts at most
  that much late; attaching itself never waits for a status.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from node_agent.status import only_builds_started, only_pods_moved

QUEUED_REPORT_SECONDS = 1.0
POD_REPORT_SECONDS = 1.0


class StatusHold:
    def __init__(
        self, queued_seconds: float = QUEUED_REPORT_SECONDS, pods_seconds: float = POD_REPORT_SECONDS
    ) -> None:
        self.queued_seconds, self.pods_seconds = queued_seconds, pods_seconds
        self._queued_since: float | None = None  # a status of queued builds held since (monotonic)
        self._written_at = -float("inf")  # the last write (monotonic)
        self._release_at: float | None = None  # when the status held now is written at the latest

    def holds(self, last: Mapping[str, Any], status: Mapping[str, Any]) -> bool:
        """Whether `status` waits, `last` being the status written before it."""
        now = time.monotonic()
        if only_builds_started(last, status):
            if self._queued_since is None:
                self._queued_since = now
            self._release_at = self._queued_since + self.queued_seconds
        elif only_pods_moved(last, status):
            self._release_at = self._written_at + self.pods_seconds
        else:
            self._release_at = None
        if self._release_at is not None and now < self._release_at:
            return True
        self._release_at = None
        return False

    def written(self) -> None:
        self._written_at = time.monotonic()
        self.settled()

    def settled(self) -> None:
        """Nothing is held: the status written (or the cache's) says it all."""
        self._queued_since = self._release_at = None

    def release_in(self) -> float | None:
        """Seconds until the held status is due (a pass then writes it), or None."""
        if self._release_at is None:
            return None
        return max(0.0, self._release_at - time.monotonic())
