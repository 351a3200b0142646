"""Captures what native code (clang, LLVM, libbpf) writes to a file descriptor: 2, or 1."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass


@dataclass
class Captured:
    text: str = ""


@contextlib.contextmanager
def captured_fd(fd: int) -> Iterator[Captured]:
    """Redirects fd to a file for the block; `text` holds what was written once it exits."""
    captured = Captured()
    saved = os.dup(fd)
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), fd)
        try:
            yield captured
        finally:
            os.dup2(saved, fd)
            os.close(saved)
            sink.seek(0)
            captured.text = sink.read().decode(errors="replace")


def captured_stderr() -> contextlib.AbstractContextManager[Captured]:
    return captured_fd(2)
