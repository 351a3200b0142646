"""The small HTTP server of /metrics and /healthz that the operator and the agent each run."""

from __future__ import annotations

import logging
import socket
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder

log = logging.getLogger(__name__)

# Returns what is wrong, or None when healthy.
HealthCheck = Callable[[], "str | None"]


def parse_address(address: str) -> tuple[str, int]:
    """`host:port`, `[v6]:port` or `:port` (every interface)."""
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"a metrics address is host:port, not {address!r}")
    return host.strip("[]") or "0.0.0.0", int(port)


def serve(
    address: str, registry: CollectorRegistry, health: HealthCheck | None = None
) -> ThreadingHTTPServer | None:
    """Serves the registry on /metrics (and health on /healthz) from a daemon thread; an empty
    address disables it. Returns the server, to stop it with shutdown()."""
    if not address:
        return None
    host, port = parse_address(address)

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            if path == "/metrics":
                encoder, content_type = choose_encoder(self.headers.get("Accept", ""))
                self._reply(200, content_type, encoder(registry))
            elif path == "/healthz" and health is not None:
                problem = health()
                self._reply(503 if problem else 200, "text/plain", f"{problem or 'ok'}\n".encode())
            else:
                self._reply(404, "text/plain", b"not found\n")

        def _reply(self, code: int, content_type: str, body: bytes) -> None:
            self.send_response(code)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            pass  # one line per scrape would drown the component's own logs

    class Server(ThreadingHTTPServer):
        address_family = socket.AF_INET6 if ":" in host else socket.AF_INET
        daemon_threads = True

    server = Server((host, port), Handler)
    threading.Thread(target=server.serve_forever, name="metrics http", daemon=True).start()
    log.info("serving metrics", extra={"address": f"{host}:{server.server_address[1]}"})
    return server
