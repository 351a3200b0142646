"""Reading a pinned map's entries back, for the map metrics (map_export)."""

from __future__ import annotations

from node_agent import errors
from node_agent.kernel import syscalls

# BPF_MAP_TYPE_PERCPU_HASH, _PERCPU_ARRAY, _LRU_PERCPU_HASH, _PERCPU_CGROUP_STORAGE.
PERCPU_MAP_TYPES = frozenset({5, 6, 10, 20})


def read_pinned(path: str) -> list[tuple[bytes, bytes]]:
    """Every (key, value) of the map pinned at path; raises KernelError (MapNotReadable for a
    per-CPU map)."""
    with syscalls.closing_fd(syscalls.obj_get(path)) as fd:
        info = syscalls.map_info(fd)
        if info.type in PERCPU_MAP_TYPES:
            # A lookup writes one value per CPU: the buffer sized for one would overflow.
            raise errors.MapNotReadable("per-CPU maps are not exported")
        return syscalls.map_items(fd, info.key_size, info.value_size)
