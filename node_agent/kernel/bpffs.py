"""The real kernel backend: programs and their maps pinned in bpffs, attached through cgroup links.

Layout under the root (default /sys/fs/bpf/bpfleet):

    <namespace>/<program>/<version>/prog            the loaded program
    <namespace>/<program>/<version>/maps/<map>      its maps, for bpftool and for readers
    <namespace>/<program>/<version>/layouts/<map>-<digest>  the same maps by layout (map_reuse)
    <namespace>/<program>/<version>/links/<pod-uid> one cgroup bpf_link per attached pod
    <namespace>/<program>/<version>/links/node      the perf-event link of a tracepoint
    <namespace>/<program>/<version>/links/file-<dev>-<ino>  one uprobe link per binary file
    <namespace>/<program>/<version>/links/if-<interface>    scope Node: one link per host interface

ClusterEbpfPrograms have the namespace "_cluster" (see host_targets for scope Node's pins).

A pinned link keeps its attachment alive without any process holding it, so the data plane runs
on through agent restarts, and the pins are the record the agent adopts when it starts again.
Unpinning a link is the only way bpfleet detaches, so it never touches programs it did not attach.
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
import threading
from collections.abc import Callable
from pathlib import Path

from node_agent import errors, netns
from node_agent.kernel import (
    helper_check,
    host_targets,
    link_update,
    links,
    map_reuse,
    maps,
    pod_files,
    pod_filter,
    symbol_lookup,
    syscalls,
)
from node_agent.kernel.attach_types import (
    NODE_WIDE_FILTERED,
    PER_BINARY_FILTERED,
    PER_POD_NETDEV,
    PROG_TYPE_KPROBE,
    KernelAttach,
)
from node_agent.kernel.backend import NODE_TARGET, Attachment, LoadedProgram, ProgramBuild, ProgramRef
from node_agent.kernel.compile_cgroup import PREFIX as CGROUP_PREFIX
from node_agent.kernel.compile_cgroup import CompileLimits
from node_agent.kernel.loader import DEFAULT_BYTECODE_DIR, DEFAULT_COMPILE_LIMITS, CheckLoaded, Loader
from node_agent.kernel.pin_tree import PinTree
from node_agent.kernel.publish import STAGING_PREFIX

log = logging.getLogger(__name__)

DEFAULT_ROOT = Path("/sys/fs/bpf/bpfleet")


def _encode(name: str) -> str:
    # bpffs refuses dots in names; Kubernetes names never contain '_', so this is reversible.
    return name.replace(".", "_")


def _decode(name: str) -> str:
    return name.replace("_", ".")


class BpffsBackend:
    def __init__(
        self,
        root: Path = DEFAULT_ROOT,
        include_dirs: tuple[Path, ...] = (),
        compile_timeout: float = 120.0,
        python: str = sys.executable,
        tracefs: Path = Path("/sys/kernel/tracing"),
        node_wide_prelude: str = "",
        proc: Path = Path("/proc"),
        *,
        sandbox: bool = True,
        compile_limits: CompileLimits = DEFAULT_COMPILE_LIMITS,
        check_loaded: CheckLoaded | None = helper_check.check_loaded,
        compile_cgroup_prefix: str = CGROUP_PREFIX,
        compile_cgroups: bool = True,
        compile_cgroups_owned: bool = False,
        bytecode_dir: Path = DEFAULT_BYTECODE_DIR,
    ) -> None:
        self.proc = proc  # the host's /proc: pods' processes and namespaces are found there
        self._tree = PinTree()  # load() runs on compile-pool threads beside the pass
        # Each loaded program's fd, opened at its first attach and closed at its unload (or once
        # bpffs no longer shows it): attaching a new pod's cgroup to 50 programs opens no program
        # pin. Its lock is held while an fd is used, so that no fd is closed (and its number
        # reused) under a link being made with it: loads and bpffs reads run beside attaches.
        self._prog_fds: dict[ProgramRef, int] = {}
        self._prog_fds_lock = threading.Lock()
        self.root = root
        self.tracefs = tracefs
        self.python = python
        # sandbox=False only lets the benchmark measure what the sandbox costs.
        self.sandbox = sandbox
        self.loader = Loader(
            include_dirs,
            node_wide_prelude,
            python,
            compile_timeout,
            sandbox,
            compile_limits,
            check_loaded,
            compile_cgroup_prefix,
            compile_cgroups,
            bytecode_dir,
            compile_cgroups_owned,
        )

    def _dir(self, ref: ProgramRef) -> Path:
        return self.root / ref.namespace / _encode(ref.name) / ref.version

    def _dir_text(self, ref: ProgramRef) -> str:
        """_dir as a string, for the attach path (pathlib's joins cost more than its syscalls)."""
        return f"{self.root}/{ref.namespace}/{_encode(ref.name)}/{ref.version}"

    def _links_dir(self, ref: ProgramRef) -> str:
        return f"{self._dir_text(ref)}/links"

    # -- programs -------------------------------------------------------------------------------

    def loaded(self) -> dict[ProgramRef, LoadedProgram]:
        found: dict[ProgramRef, LoadedProgram] = {}
        if not self.root.is_dir():
            return found
        for version_dir in sorted(self.root.glob("*/*/*")):
            if version_dir.name.startswith(STAGING_PREFIX):
                self._tree.remove_unfinished(version_dir)
                continue
            ref = ProgramRef(
                version_dir.parent.parent.name, _decode(version_dir.parent.name), version_dir.name
            )
            program = self._read_version(ref)
            if program is None:
                log.warning("pinned version without a program", extra={"path": str(version_dir)})
                continue
            found[ref] = program
        self._drop_stale_prog_fds(found)
        return found

    def _read_version(self, ref: ProgramRef) -> LoadedProgram | None:
        """One pinned version as the kernel has it, or None when its program pin is missing."""
        version_dir = self._dir(ref)
        try:
            with syscalls.closing_fd(syscalls.obj_get(str(version_dir / "prog"))) as fd:
                prog_id = syscalls.prog_info(fd).id
        except errors.KernelError:
            return None
        maps = tuple(sorted(p.name for p in (version_dir / "maps").glob("*")))
        return LoadedProgram(ref, prog_id, str(version_dir), maps, *map_reuse.carried_record(version_dir))

    def load(self, ref: ProgramRef, build: ProgramBuild, previous: ProgramRef | None = None) -> LoadedProgram:
        pin_dir = self._dir(ref)
        existing = self._read_version(ref)  # idempotent: a version already pinned is not rebuilt
        if existing is not None:
            return existing
        # Maps move between versions of one program only, never across programs or namespaces.
        same_program = previous is not None and previous.program == ref.program and previous != ref
        previous_dir = self._dir(previous) if previous is not None and same_program else None
        self._close_prog_fd(ref)  # of a program whose pins went away: never attached again
        with self._tree.building(pin_dir):
            done = self.loader.load(pin_dir, build, previous_dir)
        if previous_dir is not None:
            log.info(
                "maps carried over from the previous version",
                extra={
                    "program": f"{ref.namespace}/{ref.name}",
                    "version": ref.version,
                    "kept": list(done.kept),
                    "reset": list(done.reset),
                },
            )
        return LoadedProgram(ref, done.prog_id, str(pin_dir), done.maps, done.kept, done.reset)

    def unload(self, ref: ProgramRef) -> None:
        self._close_prog_fd(ref)
        version_dir = self._dir(ref)
        own = self._read_version(ref)
        for pin in (version_dir / "links").glob("*"):
            link_update.release(pin, own.prog_id if own is not None else None)
        # With the links gone, removing the program and map pins frees them.
        shutil.rmtree(version_dir, ignore_errors=True)
        self._tree.removed(version_dir)

    # -- attachments ----------------------------------------------------------------------------
    #
    # Per-pod programs (cgroup types) have one pinned cgroup link per pod: links/<pod-uid>.
    # Node-wide programs (tracing types) have one pinned link, links/node, and one entry per pod in
    # their bpfleet_pods map (pod cgroup id -> pod UID), which the program filters on.
    # Uprobes are node-wide per binary file: one link per distinct file the selected pods run,
    # links/file-<dev>-<ino>, and the pod's entry names its file. Pods of one image share the file,
    # hence one probe: a call is seen once, and the filter tells the pods apart.

    def _pod_map(self, ref: ProgramRef) -> Path:
        return self._dir(ref) / "maps" / pod_filter.MAP_NAME

    def attachments(self, ref: ProgramRef) -> dict[str, Attachment]:
        if self._pod_map(ref).exists():
            return self._pod_map_entries(ref)
        found: dict[str, Attachment] = {}
        for pin in sorted((self._dir(ref) / "links").glob("*")):
            info = links.info(pin)
            if info is not None:
                found[pin.name] = Attachment(ref, pin.name, info.id, info.target_id)
        return found

    def attach(
        self,
        ref: ProgramRef,
        pod_uid: str,
        cgroup_dir: Path,
        attach: KernelAttach,
        *,
        container_id: str = "",
    ) -> Attachment:
        if attach.scope == NODE_WIDE_FILTERED:
            return self._select_pod(ref, pod_uid, cgroup_dir, attach)
        if attach.scope == PER_BINARY_FILTERED:
            return self._select_pod_in_binary(ref, pod_uid, cgroup_dir, attach, container_id)
        # Strings, not Paths: this runs for every program when kubelet makes a pod's cgroup.
        links_dir = self._links_dir(ref)
        pin = f"{links_dir}/{pod_uid}"
        # This pod's pin only: reading every attachment would make each attach cost O(pods).
        current = links.info(pin)
        if current is not None and current.target_id != 0:
            return Attachment(ref, pod_uid, current.id, current.target_id)
        if current is not None:
            os.unlink(pin)  # a link whose cgroup or interface went away: replace it
        # No unlink or mkdir otherwise: links.pin_new makes the directory, or clears what is in
        # the way, only when pinning says so (each such call lets other threads take the GIL).
        try:
            if attach.scope == PER_POD_NETDEV:
                info = self._link_netdev(ref, pin, cgroup_dir, attach)
            else:
                info = self._link_cgroup(ref, pin, cgroup_dir, attach)
        except (OSError, errors.KernelError) as e:
            raise errors.AttachFailed(f"attaching to {cgroup_dir}: {e}") from e
        return Attachment(ref, pod_uid, info.id, info.target_id)

    def update(
        self, old: ProgramRef, new: ProgramRef, pod_uid: str, cgroup_dir: Path, attach: KernelAttach
    ) -> Attachment:
        info = link_update.move_pod_link(
            self._dir(old), self._dir(new), pod_uid, cgroup_dir, attach, self.proc
        )
        return Attachment(new, pod_uid, info.id, info.target_id)

    def _pin_new_link(
        self, ref: ProgramRef, pin: str | Path, create: Callable[[int], int]
    ) -> syscalls.LinkInfo:
        with self._prog_fds_lock:
            fd = self._prog_fds.get(ref)
            if fd is None:
                fd = self._prog_fds[ref] = syscalls.obj_get(f"{self._dir_text(ref)}/prog")
            return links.pin_new_with(fd, pin, create)

    def _drop_stale_prog_fds(self, pinned: dict[ProgramRef, LoadedProgram]) -> None:
        """Closes the fds of programs bpffs no longer shows as pinned (removed or replaced behind
        the agent's back): a pod is never attached to a program nothing else can see."""
        with self._prog_fds_lock:
            stale = [
                ref
                for ref, fd in self._prog_fds.items()
                if ref not in pinned or syscalls.prog_info(fd).id != pinned[ref].prog_id
            ]
        for ref in stale:
            self._close_prog_fd(ref)

    def _close_prog_fd(self, ref: ProgramRef) -> None:
        with self._prog_fds_lock:
            fd = self._prog_fds.pop(ref, None)
            if fd is not None:
                syscalls.close(fd)

    def _link_cgroup(
        self, ref: ProgramRef, pin: str, cgroup_dir: Path, attach: KernelAttach
    ) -> syscalls.LinkInfo:
        with syscalls.closing_fd(syscalls.open_directory(str(cgroup_dir))) as cgroup_fd:
            return self._pin_new_link(
                ref, pin, lambda prog_fd: syscalls.link_create_cgroup(prog_fd, cgroup_fd, attach.attach_type)
            )

    def _link_netdev(
        self, ref: ProgramRef, pin: str, cgroup_dir: Path, attach: KernelAttach
    ) -> syscalls.LinkInfo:
        pod_netns = netns.pod_netns(cgroup_dir, self.proc)

        def link_to(ifindex: int) -> syscalls.LinkInfo:
            return self._pin_new_link(
                ref,
                pin,
                lambda prog_fd: syscalls.link_create_netdev(
                    prog_fd, ifindex, attach.attach_type, attach.flags
                ),
            )

        if attach.side == "Host":
            # The host end of the pod's veth lives in the agent's own namespace.
            return link_to(netns.run_in_netns(pod_netns, lambda: netns.veth_peer_index(attach.target)))
        # An ifindex means something only in its namespace: create the link from inside it.
        return netns.run_in_netns(pod_netns, lambda: link_to(netns.interface_index(attach.target)))

    def detach(self, ref: ProgramRef, pod_uid: str) -> None:
        # Strings, as in attach: a pod that goes is a detach per program.
        if os.path.exists(f"{self._dir_text(ref)}/maps/{pod_filter.MAP_NAME}"):
            pod_map = self._pod_map(ref)
            for entry in pod_filter.entries(pod_map):
                if entry.uid == pod_uid:
                    pod_filter.remove(pod_map, entry.cgroup_id)
            self._drop_unused_file_links(ref)
            return
        links.detach(f"{self._links_dir(ref)}/{pod_uid}")

    # -- host-level targets (scope Node: ClusterEbpfPrograms) ---------------------------------

    def node_interfaces(self) -> list[str]:
        return host_targets.interfaces()

    def node_attachments(self, ref: ProgramRef) -> dict[str, Attachment]:
        return host_targets.attachments(ref, self._dir(ref) / "links")

    def attach_node(self, ref: ProgramRef, target: str, attach: KernelAttach) -> Attachment:
        if target != NODE_TARGET:
            return host_targets.attach_interface(
                ref, self._dir(ref) / "links", self._dir(ref) / "prog", target, attach
            )
        try:
            link_id = self._ensure_node_link(ref, attach)  # the same link as for pods, minus the filter
        except (OSError, errors.KernelError) as e:
            raise errors.AttachFailed(f"attaching to {attach.target}: {e}") from e
        return Attachment(ref, target, link_id, 1)

    def detach_node(self, ref: ProgramRef, target: str) -> None:
        links.detach(self._dir(ref) / "links" / host_targets.link_name(target))

    # -- reads besides the pins ---------------------------------------------------------------

    def probe_program_type(self, prog_type: int, expected_attach_type: int = 0) -> bool:
        return syscalls.prog_load_probe(prog_type, expected_attach_type)

    def read_map(self, path: str) -> list[tuple[bytes, bytes]]:
        if not Path(os.path.normpath(path)).is_relative_to(self.root):
            raise errors.KernelError(f"{path} is not one of bpfleet's pins", errno=1)
        return maps.read_pinned(path)

    # -- node-wide programs ---------------------------------------------------------------------

    def _pod_map_entries(self, ref: ProgramRef) -> dict[str, Attachment]:
        seen: dict[str, syscalls.LinkInfo | None] = {}
        found: dict[str, Attachment] = {}
        for entry in pod_filter.entries(self._pod_map(ref)):
            if entry.link not in seen:
                seen[entry.link] = links.info(self._dir(ref) / "links" / entry.link)
            link = seen[entry.link]
            # Without its link nothing runs: report the pod as not attached (cgroup id 0).
            found[entry.uid] = Attachment(
                ref, entry.uid, link.id if link else 0, entry.cgroup_id if link else 0
            )
        return found

    def _put_pod(self, ref: ProgramRef, pod_uid: str, cgroup_dir: Path, dev: int = 0, ino: int = 0) -> int:
        """Adds the pod to bpfleet_pods and returns its cgroup id."""
        cgroup_id = os.stat(cgroup_dir).st_ino  # a cgroup v2 directory's inode is its id
        pod_filter.put(self._pod_map(ref), pod_filter.PodEntry(pod_uid, cgroup_id, dev, ino))
        return cgroup_id

    def _select_pod(
        self, ref: ProgramRef, pod_uid: str, cgroup_dir: Path, attach: KernelAttach
    ) -> Attachment:
        try:
            link_id = self._ensure_node_link(ref, attach)
            cgroup_id = self._put_pod(ref, pod_uid, cgroup_dir)
        except (OSError, errors.KernelError) as e:
            raise errors.AttachFailed(f"selecting {cgroup_dir} for {attach.target}: {e}") from e
        return Attachment(ref, pod_uid, link_id, cgroup_id)

    def _ensure_node_link(self, ref: ProgramRef, attach: KernelAttach) -> int:
        pin = self._dir(ref) / "links" / pod_filter.NODE_LINK
        info = links.info(pin)
        if info is not None:
            return info.id
        pin.parent.mkdir(exist_ok=True)
        with syscalls.closing_fd(self._perf_event(attach)) as perf_fd:
            return links.pin_perf_event(self._dir(ref) / "prog", pin, perf_fd)

    def _perf_event(self, attach: KernelAttach) -> int:
        """The perf event a node-wide program hangs off: a tracepoint, or a kprobe on a function."""
        if attach.prog_type == PROG_TYPE_KPROBE:
            try:
                return syscalls.perf_event_open_kprobe(attach.target, attach.retprobe)
            except errors.KernelError as e:
                raise errors.AttachFailed(f"cannot probe kernel function {attach.target}: {e}") from e
        category, _, event = attach.target.partition(":")
        id_file = self.tracefs / "events" / category / event / "id"
        try:
            return syscalls.perf_event_open_tracepoint(int(id_file.read_text()))
        except OSError:
            raise errors.AttachFailed(f"this kernel has no tracepoint {attach.target} ({id_file})") from None

    # -- uprobes --------------------------------------------------------------------------------

    def _select_pod_in_binary(
        self, ref: ProgramRef, pod_uid: str, cgroup_dir: Path, attach: KernelAttach, container_id: str
    ) -> Attachment:
        try:
            with syscalls.closing_fd(
                pod_files.open_binary(self.proc, cgroup_dir, attach.target, attach.container, container_id)
            ) as file_fd:
                st = os.fstat(file_fd)
                link_id = self._ensure_file_link(ref, file_fd, st, attach)
            try:
                cgroup_id = self._put_pod(ref, pod_uid, cgroup_dir, st.st_dev, st.st_ino)
            finally:
                # A link made just now when the pod could not be added, or the link of a file the
                # pod ran before and no other pod runs.
                self._drop_unused_file_links(ref)
        except (OSError, errors.KernelError) as e:
            raise errors.AttachFailed(f"probing {attach.target} for {cgroup_dir}: {e}") from e
        return Attachment(ref, pod_uid, link_id, cgroup_id)

    def _ensure_file_link(
        self, ref: ProgramRef, file_fd: int, st: os.stat_result, attach: KernelAttach
    ) -> int:
        pin = self._dir(ref) / "links" / pod_filter.file_link_name(st)
        info = links.info(pin)
        if info is not None:
            return info.id
        # The fd stands for the file itself: no path is looked up twice, in or out of the pod.
        path = f"/proc/self/fd/{file_fd}"
        offset = attach.offset
        if attach.symbol:
            offset = symbol_lookup.symbol_offset(
                file_fd, attach.symbol, attach.target, self.python, sandbox=self.sandbox
            )
        pin.parent.mkdir(exist_ok=True)
        with syscalls.closing_fd(syscalls.perf_event_open_uprobe(path, offset, attach.retprobe)) as perf_fd:
            return links.pin_perf_event(self._dir(ref) / "prog", pin, perf_fd)

    def _drop_unused_file_links(self, ref: ProgramRef) -> None:
        """Detaches the uprobe links no pod entry names any more."""
        used = {entry.link for entry in pod_filter.entries(self._pod_map(ref))}
        for pin in (self._dir(ref) / "links").glob(pod_filter.FILE_LINK_PREFIX + "*"):
            if pin.name not in used:
                links.detach(pin)
