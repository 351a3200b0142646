"""Compile workers started before their build: one spare bytecode worker kept ready.

A worker's start (an interpreter, then the imports of the sandbox and the loader) is most of a
bytecode build's time, and none of it depends on the build. So after each bytecode build the agent
starts the next build's worker at once; that process waits, blocked on its stdin, until a request
comes. It is still one process per build: a spare is used once, for one request. A spare has
imported the project's modules and entered the sandbox of the build before it (its capabilities,
what it shows, its limits: REQUEST_FIELDS in sandbox.py, part of its key), and has read no byte of
any program: it reads its request in there, and the build does not wait for the sandbox (~7 ms).
It joins its compile cgroup when it starts, before any request, so that a spare is charged there
and not to the agent. A spare that died meanwhile is discarded and a worker started then.
An agent that stops kills its spare; one that dies leaves it at EOF on its stdin, where it exits.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import IO

from node_agent.errors import AgentError
from node_agent.kernel.compile_cgroup import CompileCgroup

log = logging.getLogger(__name__)

SpareKey = tuple[Hashable, ...]  # what a worker is started with: python, sandbox, limits, cgroups


@dataclass
class Started:
    """A worker process, our end of its socket, and the file that takes its output."""

    proc: subprocess.Popen[bytes]
    ours: socket.socket
    output: IO[bytes]
    cgroup: CompileCgroup | None = None  # its compile cgroup, removed with it

    def close(self) -> None:
        """Kills the process if it still runs, reaps it, closes our ends, removes its cgroup."""
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        if self.proc.stdin is not None:
            with contextlib.suppress(OSError):
                self.proc.stdin.close()
        self.ours.close()
        self.output.close()
        if self.cgroup is not None:
            self.cgroup.remove()


def start(argv_for: Callable[[int], list[str]], env: dict[str, str]) -> Started:
    """A worker for `argv_for(its socket fd)`, waiting for its request on stdin."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    output = tempfile.TemporaryFile()
    try:
        with theirs:
            proc = subprocess.Popen(
                argv_for(theirs.fileno()),
                stdin=subprocess.PIPE,
                stdout=output,
                stderr=output,
                pass_fds=(theirs.fileno(),),
                env=env,
            )
    except BaseException:
        ours.close()
        output.close()
        raise
    return Started(proc, ours, output)


class Spares:
    """At most one spare worker per key; thread-safe (the compile pool builds in parallel)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._ready: dict[SpareKey, Started] = {}
        self._closed = False

    def take(self, key: SpareKey) -> Started | None:
        """The spare for `key`, if one is alive; the caller owns it."""
        with self._lock:
            spare = self._ready.pop(key, None)
        if spare is not None and spare.proc.poll() is not None:
            spare.close()  # died waiting (killed by someone): its output is of no build
            return None
        return spare

    def replenish(self, key: SpareKey, starter: Callable[[], Started], after: float = 0.0) -> None:
        """Starts the next spare for `key` in the background `after` seconds from now, unless one
        is ready by then."""
        threading.Thread(
            target=self._fill, args=(key, starter, after), name="compile-spare", daemon=True
        ).start()

    def _fill(self, key: SpareKey, starter: Callable[[], Started], after: float = 0.0) -> None:
        if after > 0:
            time.sleep(after)
        with self._lock:
            if self._closed or key in self._ready:
                return
            try:
                self._ready[key] = starter()
            except (OSError, AgentError) as e:
                # No spare: the next build starts its own worker, and says why if it cannot.
                log.warning("no spare compile worker", extra={"error": str(e)})

    def drop(self) -> None:
        """Kills the ready spares; builds start new ones as before."""
        with self._lock:
            spares, self._ready = list(self._ready.values()), {}
        for spare in spares:
            spare.close()

    def close(self) -> None:
        """Kills the ready spares and starts no more (the agent is stopping)."""
        with self._lock:
            self._closed = True
        self.drop()


SPARES = Spares()
atexit.register(SPARES.close)
