"""Finding a file as a pod sees it: through the root of one of its processes, never the host's."""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

from node_agent import cgroups, errors
from node_agent.kernel import syscalls


def open_binary(proc: Path, cgroup_dir: Path, path: str, container: str = "", container_id: str = "") -> int:
    """An O_PATH fd of the binary as the pod sees it: looked up in the root of the pod's first
    process that has it (the pause container has not), or of the named container's."""
    if container_id:
        where = f"container {container}"
        dirs = [d for d in cgroup_dir.iterdir() if container_id in d.name]
        pids = [pid for d in dirs for pid in cgroups.processes(d)]
    else:
        where, pids = "the pod", cgroups.processes(cgroup_dir)
    if not pids:
        raise errors.AttachFailed(f"no process of {where} runs in {cgroup_dir} yet, so its root is unknown")
    roots: set[tuple[int, int]] = set()
    for pid in pids:
        try:
            root_fd = os.open(proc / str(pid) / "root", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError:
            continue  # exited meanwhile
        with syscalls.closing_fd(root_fd):
            root = os.fstat(root_fd)
            if (root.st_dev, root.st_ino) in roots:
                continue
            roots.add((root.st_dev, root.st_ino))
            fd = open_in_root(root_fd, path)
        if fd is None:
            continue
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise errors.AttachFailed(f"{path} in {where} is not a regular file")
        return fd
    raise errors.AttachFailed(f"no file {path} in {where}")


def open_in_root(root_fd: int, path: str) -> int | None:
    """An O_PATH fd of `path` inside a container root, or None when it has no such file."""
    try:
        return syscalls.open_in_root(root_fd, path, os.O_PATH)
    except errors.KernelError as e:
        if e.errno == errno.ENOENT:
            return None
        if e.errno != errno.ENOSYS:
            raise
    # Before 5.6 (no openat2): through the root's magic link, where an absolute symlink would
    # point out of the container.
    try:
        return os.open(f"/proc/self/fd/{root_fd}/{path.lstrip('/')}", os.O_PATH | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
