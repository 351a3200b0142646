"""Pinned bpf_links: how bpfleet attaches (a pin per link), finds its attachments and detaches."""

from __future__ import annotations

import contextlib
import errno
import logging
import os
from collections.abc import Callable
from pathlib import Path

from node_agent import errors, fault_points
from node_agent.kernel import syscalls

log = logging.getLogger(__name__)


def info(pin: str | Path) -> syscalls.LinkInfo | None:
    """The pinned link as the kernel has it, or None when there is no such pin."""
    try:
        with syscalls.closing_fd(syscalls.obj_get(str(pin))) as fd:
            return syscalls.link_info(fd)
    except errors.KernelError:
        return None


def pin_new(prog_pin: str | Path, pin: str | Path, create: Callable[[int], int]) -> syscalls.LinkInfo:
    """Creates a link of the pinned program with `create(prog_fd) -> link fd` and pins it. The pin's
    directory is made if missing; a pin in the way that is not a live link is replaced."""
    with syscalls.closing_fd(syscalls.obj_get(str(prog_pin))) as prog_fd:
        return pin_new_with(prog_fd, pin, create)


def pin_new_with(prog_fd: int, pin: str | Path, create: Callable[[int], int]) -> syscalls.LinkInfo:
    """pin_new of a program the caller holds open."""
    with syscalls.closing_fd(create(prog_fd)) as link_fd:
        fault_points.reached("attach-pin")
        try:
            syscalls.obj_pin(link_fd, str(pin))
        except errors.KernelError as e:
            if e.errno == errno.ENOENT:
                os.makedirs(os.path.dirname(pin), exist_ok=True)
            elif e.errno == errno.EEXIST and info(pin) is None:
                os.unlink(pin)  # not a link (a stray file, say): nothing of ours runs through it
            else:
                raise
            syscalls.obj_pin(link_fd, str(pin))
        return syscalls.link_info(link_fd)


def pin_perf_event(prog_pin: Path, pin: Path, perf_fd: int) -> int:
    """Links the pinned program to an open perf event (tracepoint, kprobe, uprobe), pins the link
    and returns its id. The perf fd stays the caller's to close."""
    return pin_new(prog_pin, pin, lambda prog_fd: syscalls.link_create_perf_event(prog_fd, perf_fd)).id


def detach(pin: str | Path) -> None:
    # Unpinning alone frees the link a moment later; detaching first makes it take effect now.
    # Perf-event links cannot be detached (EOPNOTSUPP): for them the unpin is the detach.
    try:
        with syscalls.closing_fd(syscalls.obj_get(str(pin))) as fd:
            syscalls.link_detach(fd)
        fault_points.reached("detach")
    except errors.KernelError as e:
        if e.errno not in (errno.ENOENT, errno.EOPNOTSUPP):
            log.warning("link detach failed; unpinning", extra={"pin": str(pin), "error": str(e)})
    with contextlib.suppress(FileNotFoundError):
        os.unlink(pin)
