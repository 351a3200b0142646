"""The timeouts of every API request, for both clients (rest.py and kube_client.py)."""

from __future__ import annotations

import os

CONNECT_SECONDS = 5.0


def request_seconds() -> float:
    """The read timeout of every request that names none (env BPFLEET_API_TIMEOUT_SECONDS, 15):
    without one, a request sent on a pooled connection that died silently (open, nothing arrives)
    waits forever. 15 s, as the HTTP/2 health check of Go clients finds a dead connection in. Watches
    set their own (bpfleet_api/informer.py)."""
    return float(os.environ.get("BPFLEET_API_TIMEOUT_SECONDS", "15"))
