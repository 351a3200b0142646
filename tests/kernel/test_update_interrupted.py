"""An update interrupted between its kernel steps (the agent killed) finishes cleanly when run again.

A move is: BPF_LINK_UPDATE, pin the link under the new version, unpin it from the old one. These tests
leave the kernel as a kill -9 after each step would, then let the backend go on as a restarted
agent's reconcile does (update again, unload the old version): each ends with exactly the new version
on the pod, through the same link.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from node_agent.kernel import syscalls
from node_agent.kernel.backend import Attachment, LoadedProgram, ProgramBuild, ProgramRef
from node_agent.kernel.bpffs import BpffsBackend
from tests.kernel.support import COUNTER, EGRESS, bpftool

if TYPE_CHECKING:
    from tests.kernel.conftest import PodCgroup

pytestmark = pytest.mark.kernel

V1, V2 = (
    ProgramRef("team-a", "counter", "00000000000000b1"),
    ProgramRef("team-a", "counter", "00000000000000b2"),
)


def on_pod(cgroup: Path, ours: set[int]) -> list[int]:
    return sorted(p["id"] for p in bpftool("cgroup", "show", str(cgroup)) if p["id"] in ours)


def two_versions(backend: BpffsBackend) -> tuple[LoadedProgram, LoadedProgram]:
    one = backend.load(V1, COUNTER)
    two = backend.load(V2, ProgramBuild(COUNTER.source + "\n/* v2 */\n", COUNTER.function, EGRESS), V1)
    return one, two


@contextmanager
def link_moved_to_v2(
    backend: BpffsBackend, pod: PodCgroup
) -> Iterator[tuple[LoadedProgram, LoadedProgram, Attachment, int]]:
    """v1 attached to the pod, then the first step of a move: its link updated to run v2, still
    pinned as v1's. Yields both versions, the attachment and the link's fd (open inside)."""
    one, two = two_versions(backend)
    link = backend.attach(V1, pod.uid, pod.pod, EGRESS)
    old_pin = Path(one.pin_dir) / "links" / pod.uid
    with (
        syscalls.closing_fd(syscalls.obj_get(str(old_pin))) as link_fd,
        syscalls.closing_fd(syscalls.obj_get(f"{one.pin_dir}/prog")) as old_fd,
        syscalls.closing_fd(syscalls.obj_get(f"{two.pin_dir}/prog")) as new_fd,
    ):
        syscalls.link_update(link_fd, new_fd, old_fd)
        yield one, two, link, link_fd


def test_killed_after_the_link_update_before_the_pin_moved(backend: BpffsBackend, pod_cgroups):
    pod = pod_cgroups()
    with link_moved_to_v2(backend, pod) as (one, two, link, _):
        pass
    # The link runs v2 but is v1's pin: the update goes on (no BPF_F_REPLACE failure) and moves it.
    moved = backend.update(V1, V2, pod.uid, pod.pod, EGRESS)
    backend.unload(V1)
    assert moved.link_id == link.link_id
    assert on_pod(pod.pod, {one.prog_id, two.prog_id}) == [two.prog_id]
    assert set(backend.attachments(V2)) == {pod.uid} and backend.attachments(V2)[pod.uid].live


def test_killed_after_the_new_pin_before_the_old_was_removed(backend: BpffsBackend, pod_cgroups):
    pod = pod_cgroups()
    with link_moved_to_v2(backend, pod) as (one, two, link, link_fd):
        (Path(two.pin_dir) / "links").mkdir(exist_ok=True)
        syscalls.obj_pin(link_fd, f"{two.pin_dir}/links/{pod.uid}")
    # The restarted agent finds the pod attached under v2 and unloads v1: the shared link stays.
    assert backend.attachments(V2)[pod.uid].live
    backend.unload(V1)
    assert on_pod(pod.pod, {one.prog_id, two.prog_id}) == [two.prog_id]
    assert backend.attachments(V2)[pod.uid].link_id == link.link_id
    assert backend.attachments(V2)[pod.uid].live
    assert not Path(one.pin_dir).exists()
