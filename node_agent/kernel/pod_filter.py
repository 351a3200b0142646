"""The `bpfleet_pods` map of node-wide programs: which pods the program acts for.

Declared by bpf/include/node_wide_prelude.h. Key: the pod's cgroup id (u64). Value:
struct bpfleet_pod { char uid[48]; __u64 dev, ino; } — the pod's UID, so that a restarted agent
finds its entries again, and for uprobes the binary file probed for it (0 for tracepoints).
Programs pinned before dev and ino existed have 48-byte values; both sizes are read and written.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from node_agent.kernel import syscalls

MAP_NAME = "bpfleet_pods"
NODE_LINK = "node"  # the link pin of a node-wide program; never a pod UID
FILE_LINK_PREFIX = "file-"  # link pins of uprobes, one per probed file: file-<dev>-<ino>
UID_SIZE = 48
VALUE_SIZE = UID_SIZE + 16


@dataclass(frozen=True)
class PodEntry:
    """One selected pod, and the binary file probed for it (if any)."""

    uid: str
    cgroup_id: int
    dev: int = 0
    ino: int = 0

    @property
    def link(self) -> str:
        """The name of the link pin it runs through."""
        return f"{FILE_LINK_PREFIX}{self.dev}-{self.ino}" if self.ino else NODE_LINK

    @classmethod
    def parse(cls, key: bytes, value: bytes) -> PodEntry:
        uid = value[:UID_SIZE].split(b"\0", 1)[0].decode()
        dev, ino = struct.unpack_from("=QQ", value, UID_SIZE) if len(value) >= VALUE_SIZE else (0, 0)
        return cls(uid, struct.unpack("=Q", key)[0], dev, ino)

    def value(self, size: int) -> bytes:
        packed = self.uid.encode()[: UID_SIZE - 1].ljust(UID_SIZE, b"\0") + struct.pack(
            "=QQ", self.dev, self.ino
        )
        return packed[:size].ljust(size, b"\0")


def file_link_name(st: os.stat_result) -> str:
    return f"{FILE_LINK_PREFIX}{st.st_dev}-{st.st_ino}"


@contextmanager
def _opened_map(pin: Path) -> Iterator[tuple[int, int]]:
    with syscalls.closing_fd(syscalls.obj_get(str(pin))) as fd:
        yield fd, syscalls.map_info(fd).value_size


def entries(pin: Path) -> list[PodEntry]:
    with _opened_map(pin) as (fd, size):
        return [PodEntry.parse(key, value) for key, value in syscalls.map_items(fd, 8, size)]


def put(pin: Path, entry: PodEntry) -> None:
    with _opened_map(pin) as (fd, size):
        syscalls.map_update(fd, struct.pack("=Q", entry.cgroup_id), entry.value(size))


def remove(pin: Path, cgroup_id: int) -> None:
    with _opened_map(pin) as (fd, _):
        syscalls.map_delete(fd, struct.pack("=Q", cgroup_id))
