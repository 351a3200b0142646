"""Named points where a fault test stops the agent so that it can be killed exactly there.

Test-only: with BPFLEET_TEST_PAUSE_FILE unset (production) `reached()` returns at once. When set,
each point reads that file; if it holds the point's name, the agent logs "paused at fault point"
and sleeps until it is killed. The points:

- compile: the compile worker has its request and is compiling;
- publish: some pins of a new version are in its staging directory, not renamed into place yet;
- attach-pin: a link exists and is not pinned yet;
- detach: a link is detached and its pin not yet removed;
- update-repin: a link runs the new version and is pinned under the old one only;
- update-unpin: a link is pinned under both versions.
"""

from __future__ import annotations

import logging
import os
import time

log = logging.getLogger(__name__)

_FILE = os.environ.get("BPFLEET_TEST_PAUSE_FILE")


def reached(point: str) -> None:
    if _FILE is None:
        return
    try:
        with open(_FILE) as f:
            wanted = f.read().split()
    except OSError:
        return
    if point in wanted:
        log.warning("paused at fault point", extra={"point": point})
        while True:
            time.sleep(3600)
