"""The C library through ctypes, found by its soname.

Not ctypes.util.find_library: that runs `ldconfig -p` (and then `ld`) in a subprocess, some
milliseconds each, which the short-lived compile worker paid three times per build; inside the
compile sandbox neither program exists and the lookup forks for nothing.
"""

from __future__ import annotations

import ctypes
import importlib

GLIBC = "libc.so.6"


def load() -> ctypes.CDLL:
    """A new handle on libc (function attributes such as restype are per handle)."""
    try:
        return ctypes.CDLL(GLIBC, use_errno=True)
    except OSError:  # not glibc: ask the system
        util = importlib.import_module("ctypes.util")
        return ctypes.CDLL(util.find_library("c") or GLIBC, use_errno=True)
