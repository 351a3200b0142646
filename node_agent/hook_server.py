"""The agent's end of the container-start hook: a unix socket where a runtime hook asks
"pod <uid>: ready?" and gets the answer once every program selecting that pod is attached.

One request per connection, one JSON line each way:
    -> {"pod": "<uid>", "timeout": 5.0}             (also "cgroup", "container": logged only)
    <- {"ready": true, "known": true, "missing": [], "waited": 0.004}
The socket is root's alone (0600 in a 0700 directory): only the runtime's hooks ask. The pod's
cgroup is found by its UID, never taken from the request.
"""

from __future__ import annotations

import json
import logging
import os
import re
import socketserver
import threading
from pathlib import Path
from typing import Any

from node_agent.fast_path import FastPath
from node_agent.hook import DEFAULT_SOCKET

log = logging.getLogger(__name__)

__all__ = ["DEFAULT_SOCKET", "HookServer", "answer"]
MAX_WAIT = 30.0  # no hook holds a container start longer, whatever it asks
_MAX_REQUEST = 4096
_UID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def answer(fast_path: FastPath, request: Any) -> dict[str, Any]:
    """The reply to one decoded request (pure but for the wait)."""
    if not isinstance(request, dict) or not isinstance(request.get("pod"), str):
        return {"ready": False, "error": "the request needs a pod UID"}
    uid = request["pod"]
    if not _UID.fullmatch(uid):
        return {"ready": False, "error": "the pod UID is not a UUID"}
    try:
        timeout = min(max(float(request.get("timeout", 5.0)), 0.0), MAX_WAIT)
    except (TypeError, ValueError):
        return {"ready": False, "error": "the timeout is not a number"}
    readiness = fast_path.wait_ready(uid, timeout)
    log.info(
        "container start asked",
        extra={
            "pod": uid,
            "container": str(request.get("container", ""))[:253],
            "ready": readiness.ready,
            "waited": round(readiness.waited, 4),
            "missing": readiness.missing[:10],
        },
    )
    return {
        "ready": readiness.ready,
        "known": readiness.known,
        "missing": readiness.missing,
        "waited": readiness.waited,
    }


class _Handler(socketserver.StreamRequestHandler):
    server: _Server

    def handle(self) -> None:
        line = self.rfile.readline(_MAX_REQUEST)
        try:
            request = json.loads(line)
        except ValueError:
            request = None
        reply = answer(self.server.fast_path, request)
        self.wfile.write(json.dumps(reply).encode() + b"\n")


class _Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True

    def __init__(self, path: Path, fast_path: FastPath) -> None:
        self.fast_path = fast_path
        super().__init__(str(path), _Handler)


class HookServer:
    def __init__(self, path: Path, fast_path: FastPath) -> None:
        self.path = path
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        path.unlink(missing_ok=True)  # one left by an agent that died
        old_umask = os.umask(0o177)  # created 0600: no window where others may connect
        try:
            self._server = _Server(path, fast_path)
        finally:
            os.umask(old_umask)
        self._thread = threading.Thread(target=self._server.serve_forever, name="hook-server", daemon=True)

    def start(self) -> None:
        self._thread.start()
        log.info("container-start hook socket ready", extra={"socket": str(self.path)})

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self.path.unlink(missing_ok=True)
