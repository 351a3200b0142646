"""How kopf's watches notice that they are broken, as the watch caches do (bpfleet_api/informer.py).

- Each watch asks the server to end it after `server_timeout` (BPFLEET_WATCH_SECONDS, 30 s); the
  server sends a bookmark just before, so a healthy watch is never silent for longer.
- `inactivity_timeout` (that + 5 s) without an event ends a stalled watch: kopf watches again from
  the last resourceVersion, and lists again only on a 410. A stall is noticed within 35 s of the
  last event (kopf's default is 70 s; with no server timeout a watch lasts 30 to 60 minutes).
- The pause before a relist is drawn once per process, so replicas restarted together do not relist
  in step; failed requests themselves retry with full jitter (backoff.py).
"""

from __future__ import annotations

import os
import random

import kopf

from bpfleet_api import kube_client

GRACE = 5.0
CONNECT_SECONDS = 5.0


def watch_seconds() -> int:
    return max(int(os.environ.get("BPFLEET_WATCH_SECONDS", "30")), 1)


def apply(settings: kopf.OperatorSettings, rng: random.Random | None = None) -> None:
    seconds = watch_seconds()
    settings.watching.server_timeout = seconds
    settings.watching.inactivity_timeout = seconds + GRACE
    settings.watching.client_timeout = None  # a total time would cut healthy watches; silence decides
    settings.watching.connect_timeout = CONNECT_SECONDS
    settings.networking.connect_timeout = CONNECT_SECONDS
    # A request sent on a pooled connection that died silently fails after 15 s, not kopf's 5 minutes.
    settings.networking.request_timeout = kube_client.request_seconds()
    settings.watching.reconnect_backoff = (rng or random.Random()).uniform(0.1, 1.0)
