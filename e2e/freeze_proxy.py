"""A loopback TCP proxy in front of the API server that can break its connections the way networks
do, for the fault tests and figures:

- freeze(): every connection open now stays open and forwards nothing more, in either direction
  (a half-dead flow behind a load balancer or a NAT that forgot it); new connections work.
- refuse: while set, new connections are accepted and closed at once (an API server going away).

The proxy does not look into TLS: the client talks to the API server through it, end to end.
"""

from __future__ import annotations

import contextlib
import select
import socket
import threading
from dataclasses import dataclass, field
from pathlib import Path

import yaml

_POLL = 0.1


@dataclass
class _Pair:
    client: socket.socket
    upstream: socket.socket
    frozen: threading.Event = field(default_factory=threading.Event)
    closed: threading.Event = field(default_factory=threading.Event)

    def close(self) -> None:
        self.closed.set()
        for sock in (self.client, self.upstream):
            with contextlib.suppress(OSError):
                sock.close()


class FreezingProxy:
    def __init__(self, upstream: tuple[str, int]) -> None:
        self.upstream = upstream
        self.refuse = False
        self.accepted = 0  # connections accepted, refused ones included
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._pairs: list[_Pair] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept_loop, name="freezing proxy", daemon=True)

    @property
    def port(self) -> int:
        return int(self._listener.getsockname()[1])

    def __enter__(self) -> FreezingProxy:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def freeze(self) -> int:
        """Freezes the connections open now; returns how many."""
        with self._lock:
            live = [p for p in self._pairs if not p.closed.is_set()]
        for pair in live:
            pair.frozen.set()
        return len(live)

    def open_connections(self) -> int:
        with self._lock:
            return len([p for p in self._pairs if not p.closed.is_set()])

    def close(self) -> None:
        self._stop.set()
        with contextlib.suppress(OSError):
            self._listener.close()
        with self._lock:
            pairs = list(self._pairs)
        for pair in pairs:
            pair.close()
        if self._thread.is_alive():
            self._thread.join(timeout=5)

    def kubeconfig(self, original: Path, path: Path) -> Path:
        """A copy of `original` whose clusters are reached through this proxy."""
        config = yaml.safe_load(original.read_text())
        for cluster in config["clusters"]:
            cluster["cluster"]["server"] = f"https://127.0.0.1:{self.port}"
        path.write_text(yaml.safe_dump(config))
        return path

    def _accept_loop(self) -> None:
        self._listener.settimeout(_POLL)
        while not self._stop.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.accepted += 1
            if self.refuse:
                client.close()
                continue
            try:
                upstream = socket.create_connection(self.upstream, timeout=5)
            except OSError:
                client.close()
                continue
            pair = _Pair(client, upstream)
            with self._lock:
                self._pairs = [p for p in self._pairs if not p.closed.is_set()] + [pair]
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(pair, source, sink), daemon=True).start()

    def _pump(self, pair: _Pair, source: socket.socket, sink: socket.socket) -> None:
        try:
            while not pair.closed.is_set() and not self._stop.is_set():
                readable, _, _ = select.select([source], [], [], _POLL)
                if not readable:
                    continue
                if pair.frozen.is_set():
                    # Forward nothing, but notice the peer hanging up, so the pair is let go.
                    if source.recv(1, socket.MSG_PEEK) == b"":
                        break
                    self._stop.wait(_POLL)
                    continue
                data = source.recv(65536)
                if not data:
                    break
                sink.sendall(data)
        except OSError:
            pass
        finally:
            pair.close()
