"""Watches kubelet's cgroup tree with inotify and says when a pod's or a container's cgroup appears.

Watched: the kubelet root (for kubepods / kubepods.slice being made), the QoS parents of both drivers
(cgroups.QOS_PARENTS) and every pod cgroup in them (its containers' cgroups, and `cgroup.events`
changing when a first process joins). No polling: one thread blocks in poll(2) on the inotify fd.

inotify only reports what happens after a watch is added, so each directory is listed right after
its watch is added: a child made in between is reported from that listing, never lost.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import logging
import os
import select
import struct
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePath

from node_agent.cgroups import QOS_PARENTS, container_id_of, pod_uid_of

log = logging.getLogger(__name__)

_IN_MODIFY = 0x00000002
IN_CREATE = 0x00000100
_IN_DELETE_SELF = 0x00000400
_IN_IGNORED = 0x00008000
_IN_ISDIR = 0x40000000
_IN_ONLYDIR = 0x01000000
_IN_NONBLOCK = os.O_NONBLOCK
_IN_CLOEXEC = os.O_CLOEXEC
_EVENT = struct.Struct("iIII")  # wd, mask, cookie, len; then len bytes of name
_TREE_MASK = IN_CREATE | _IN_DELETE_SELF | _IN_ONLYDIR
# cgroup.events is modified when the pod gets its first process. kernfs notifies only inodes in
# memory, so the file is watched itself (a watch keeps its inode), not through its directory.
_EVENTS_FILE = "cgroup.events"


@dataclass(frozen=True)
class CgroupListener:
    """What the watcher tells; each is called on the watcher's thread and must not block long."""

    pod: Callable[[str, Path], None]  # pod UID, its pod-level cgroup
    container: Callable[[str, str, Path], None]  # pod UID, container id, the container's cgroup
    populated: Callable[[str, Path], None]  # pod UID, its cgroup: cgroup.events changed


class Inotify:
    """The three libc calls, through ctypes (the standard library has no inotify)."""

    def __init__(self) -> None:
        self._libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        fd = self._libc.inotify_init1(_IN_NONBLOCK | _IN_CLOEXEC)
        if fd < 0:
            raise OSError(ctypes.get_errno(), "inotify_init1 failed")
        self.fd: int = fd

    def add(self, path: Path, mask: int) -> int:
        wd = self._libc.inotify_add_watch(self.fd, os.fsencode(path), ctypes.c_uint32(mask))
        if wd < 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err), str(path))
        return int(wd)

    def read(self) -> list[tuple[int, int, str]]:
        try:
            data = os.read(self.fd, 64 * 1024)
        except BlockingIOError:
            return []
        events, offset = [], 0
        while offset + _EVENT.size <= len(data):
            wd, mask, _cookie, length = _EVENT.unpack_from(data, offset)
            raw = data[offset + _EVENT.size : offset + _EVENT.size + length]
            events.append((wd, mask, os.fsdecode(raw.rstrip(b"\0"))))
            offset += _EVENT.size + length
        return events

    def close(self) -> None:
        os.close(self.fd)


class CgroupWatch:
    """Follows the kubelet cgroup tree under `root` and tells `listener` what appears."""

    def __init__(self, root: Path, listener: CgroupListener, nice: int = 0) -> None:
        """`nice`: the watch thread's own nice value (0: as the agent's)."""
        self.root, self.listener, self.nice = root, listener, nice
        self._inotify = Inotify()
        # wd -> (directory relative to the root, the pod UID when it is a pod cgroup)
        self._watched: dict[int, tuple[PurePath, str]] = {}
        self._events: dict[int, tuple[PurePath, str]] = {}  # wd of a pod's cgroup.events -> the same
        self._stop_r, self._stop_w = os.pipe2(os.O_CLOEXEC)
        self._thread: threading.Thread | None = None
        self._root_watched = False

    def start(self) -> None:
        self._root_watched = self._watch(PurePath("."))
        self._thread = threading.Thread(target=self._loop, name="cgroup-watch", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        os.write(self._stop_w, b"x")
        if self._thread is not None:
            self._thread.join(5)
        for fd in (self._stop_r, self._stop_w):
            os.close(fd)
        self._inotify.close()

    def watched(self) -> list[PurePath]:
        """The directories watched now, relative to the root (for tests and metrics)."""
        return sorted(rel for rel, _uid in self._watched.values())

    def _loop(self) -> None:
        if self.nice:
            self._raise_priority()
        poller = select.poll()
        poller.register(self._inotify.fd, select.POLLIN)
        poller.register(self._stop_r, select.POLLIN)
        while True:
            # Kubelet's root not there yet (the agent started first): look for it once a second
            # until it is; from then on, only events wake this thread.
            ready = {fd for fd, _ in poller.poll(None if self._root_watched else 1000)}
            if self._stop_r in ready:
                return
            if not self._root_watched:
                self._root_watched = self._watch(PurePath("."))
            for wd, mask, name in self._inotify.read():
                try:
                    self._handle(wd, mask, name)
                except Exception:  # one bad event must not end the watch
                    log.exception("cgroup event failed", extra={"name": name})

    def _raise_priority(self) -> None:
        try:
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), self.nice)  # this thread only
        except OSError as e:  # no CAP_SYS_NICE: attaching works the same, with the node's slices
            log.warning("the cgroup watch keeps its priority", extra={"nice": self.nice, "error": str(e)})

    def _handle(self, wd: int, mask: int, name: str) -> None:
        if mask & _IN_IGNORED:
            gone = self._watched.pop(wd, None)  # the directory went away
            self._events.pop(wd, None)
            if gone is not None and gone[0] == PurePath("."):
                self._root_watched = False  # kubelet's root itself: look for it again
            return
        if wd in self._events and mask & _IN_MODIFY:
            rel, pod_uid = self._events[wd]
            self.listener.populated(pod_uid, self.root / rel)
            return
        where = self._watched.get(wd)
        if where is not None and mask & IN_CREATE and mask & _IN_ISDIR:
            self._child(where[0] / name)

    def _child(self, rel: PurePath) -> None:
        """A directory appeared (or was found by a listing): watch it if it matters, and tell."""
        parent, name = rel.parent, rel.name
        if rel in QOS_PARENTS:
            self._watch(rel)
            return
        uid = pod_uid_of(parent, name)
        if uid is not None:
            # Told first (its programs attach now), then watched: the listing after the watch is
            # added reports a container made meanwhile.
            self.listener.pod(uid, self.root / rel)
            self._watch(rel, uid)
            return
        parent_uid = self._pod_of(parent)
        container = container_id_of(name)
        if parent_uid and container:
            self.listener.container(parent_uid, container, self.root / rel)

    def _pod_of(self, rel: PurePath) -> str:
        return pod_uid_of(rel.parent, rel.name) or ""

    def _watch(self, rel: PurePath, pod_uid: str = "") -> bool:
        """Watches a directory and reports what it holds already; False when it is not there."""
        path = self.root / rel
        try:
            wd = self._inotify.add(path, _TREE_MASK)
            if pod_uid:
                self._events[self._inotify.add(path / _EVENTS_FILE, _IN_MODIFY)] = (rel, pod_uid)
        except OSError as e:
            if e.errno not in (errno.ENOENT, errno.ENOTDIR):  # gone already: nothing to follow
                log.warning("cannot watch a cgroup", extra={"cgroup": str(path), "error": str(e)})
            return False
        if wd in self._watched:
            return True  # watched already (inotify gives the same wd for the same inode)
        self._watched[wd] = (rel, pod_uid)
        self._list(rel)
        return True

    def _list(self, rel: PurePath) -> None:
        try:
            children = sorted(entry.name for entry in os.scandir(self.root / rel) if entry.is_dir())
        except OSError:
            return
        for name in children:
            child = rel / name
            if rel == PurePath(".") and child not in QOS_PARENTS:
                continue  # the root holds more than kubelet's tree: only its parents matter
            self._child(child)
