"""Moving a pinned link from one version of a program to the next without a gap or an overlap.

BPF_LINK_UPDATE swaps the program inside the link: the hook runs the old program up to one packet and
the new one from the next, never none and never both. The pin then moves to the new version's
directory (pinned there first, then unpinned from the old one), so unloading the old version later
leaves the moved link alone. Perf-event links have no update: they are not moved.
"""

from __future__ import annotations

from pathlib import Path

from node_agent import errors, fault_points, netns
from node_agent.kernel import links, syscalls
from node_agent.kernel.attach_types import PER_POD_CGROUP, PER_POD_NETDEV, PROG_TYPE_XDP, KernelAttach

# The link types whose program the kernel can replace in place.
UPDATABLE = frozenset({syscalls.BPF_LINK_TYPE_CGROUP, syscalls.BPF_LINK_TYPE_XDP, syscalls.BPF_LINK_TYPE_TCX})


def move(
    old_pin: Path,
    new_pin: Path,
    old_prog: Path,
    new_prog: Path,
    *,
    attach_type: int | None = None,
    target_id: int | None = None,
) -> syscalls.LinkInfo:
    """Switches the link pinned at old_pin to new_prog and re-pins it at new_pin. Raises
    AttachFailed when it is not a link that can be moved there: not on `attach_type`'s hook, or not
    on `target_id` (an ifindex), when given. The link is then left as it was."""
    try:
        with (
            syscalls.closing_fd(syscalls.obj_get(str(old_pin))) as link_fd,
            syscalls.closing_fd(syscalls.obj_get(str(old_prog))) as old_fd,
            syscalls.closing_fd(syscalls.obj_get(str(new_prog))) as new_fd,
        ):
            info = syscalls.link_info(link_fd)
            if info.type not in UPDATABLE:
                raise errors.AttachFailed(f"a link of type {info.type} cannot be updated in place")
            if attach_type is not None and info.attach_type != attach_type:
                # The same program type on another hook (ingress vs egress): never reuse the link.
                raise errors.AttachFailed(f"the link is on hook {info.attach_type}, not {attach_type}")
            if target_id is not None and info.target_id != target_id:
                raise errors.AttachFailed(f"the link is on ifindex {info.target_id}, not {target_id}")
            # Already on new_prog: an agent killed between the update and the re-pin. Only the pin moves.
            if info.prog_id != syscalls.prog_info(new_fd).id:
                syscalls.link_update(link_fd, new_fd, old_fd)
                fault_points.reached("update-repin")
            new_pin.parent.mkdir(exist_ok=True)
            new_pin.unlink(missing_ok=True)  # a dead link of the new version, whose target went away
            syscalls.obj_pin(link_fd, str(new_pin))
            fault_points.reached("update-unpin")
            old_pin.unlink()
            return syscalls.link_info(link_fd)
    except (OSError, errors.KernelError) as e:
        raise errors.AttachFailed(f"updating the link {old_pin.name} in place: {e}") from e


def move_pod_link(
    old_dir: Path, new_dir: Path, pod_uid: str, cgroup_dir: Path, attach: KernelAttach, proc: Path
) -> syscalls.LinkInfo:
    """Moves a pod's link from one version directory to the other; `attach` is the new version's."""
    if attach.scope not in (PER_POD_CGROUP, PER_POD_NETDEV):
        raise errors.AttachFailed("only cgroup and interface links can be updated in place")
    target_id = None
    if attach.scope == PER_POD_NETDEV:
        # The interface the new version wants must be the one the link is on.
        try:
            pod_netns = netns.pod_netns(cgroup_dir, proc)
            target_id = netns.pod_interface_index(pod_netns, attach.target, attach.side)
        except (OSError, errors.KernelError) as e:
            raise errors.AttachFailed(f"finding {attach.target} of {cgroup_dir}: {e}") from e
    return move(
        old_dir / "links" / pod_uid,
        new_dir / "links" / pod_uid,
        old_dir / "prog",
        new_dir / "prog",
        # An XDP link's info has no attach type: its hook is the interface alone.
        attach_type=None if attach.prog_type == PROG_TYPE_XDP else attach.attach_type,
        target_id=target_id,
    )


def release(pin: Path, prog_id: int | None) -> None:
    """Detaches the link pinned at `pin` as its version goes, unless it runs another program than
    `prog_id`: then it was moved already (an agent killed before it unpinned it here), the new
    version's pin holds it, and only this pin goes; detaching would take it from the pod."""
    info = links.info(pin)
    if prog_id is not None and info is not None and info.prog_id != prog_id:
        pin.unlink(missing_ok=True)
        return
    links.detach(pin)
