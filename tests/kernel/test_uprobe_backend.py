"""Uprobes and uretprobes through BpffsBackend on the real kernel: one probe per binary file the
selected pods run, the pods told apart by bpfleet_pods; and tracepoints on the same pod map.

Pods here are pod cgroups whose container process runs chrooted into a root holding /bin/target
(e2e/probe_target.c), as a container runs in its image; `/bin/target call N` calls the probed
function N times. Counts are read with bpftool, links are checked with it too.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from e2e.podsim import (
    PROBE_SYMBOL,
    PROBE_TARGET,
    build_probe_root,
    run_in_cgroup,
    spawn_in_cgroup,
    wait_chrooted,
)
from node_agent import elf, errors
from node_agent.kernel.attach_types import kernel_attach
from node_agent.kernel.backend import ProgramBuild, ProgramRef
from node_agent.kernel.bpffs import BpffsBackend
from tests.kernel.support import INCLUDE_DIR, PROGRAMS, bpftool, links_of, wait_until

if TYPE_CHECKING:
    from tests.kernel.conftest import PodCgroup

pytestmark = pytest.mark.kernel

COUNTER_SOURCE = (PROGRAMS / "uprobe-call-counter.c").read_text()
EXEC_SOURCE = (PROGRAMS / "exec-counter.c").read_text()
UPROBE = kernel_attach({"type": "Uprobe", "binary": PROBE_TARGET, "symbol": PROBE_SYMBOL})
CALLS = ProgramBuild(COUNTER_SOURCE, "count_calls", UPROBE)
REF = ProgramRef("team-a", "calls", "0123456789abcdef")


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_probe_root(tmp_path_factory.mktemp("image"))


@pytest.fixture(scope="module")
def other_image(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_probe_root(tmp_path_factory.mktemp("other-image"))


@pytest.fixture
def pods_in(pod_cgroups: Callable[[], PodCgroup]) -> Iterator[Callable[[Path], PodCgroup]]:
    """pods_in(root): a pod cgroup whose container process sleeps chrooted into root."""
    started: list[subprocess.Popen[bytes]] = []

    def make(root: Path) -> PodCgroup:
        pod = pod_cgroups()
        start_container(pod.container, root, started)
        return pod

    try:
        yield make
    finally:
        for process in started:
            process.kill()
            process.wait(timeout=10)


def start_container(cgroup: Path, root: Path, started: list[subprocess.Popen[bytes]]) -> None:
    process = spawn_in_cgroup(["chroot", str(root), PROBE_TARGET, "sleep"], cgroup)
    started.append(process)
    wait_chrooted(process.pid, root)


def call(pod: PodCgroup, root: Path, times: int) -> None:
    result = run_in_cgroup(["chroot", str(root), PROBE_TARGET, "call", str(times)], pod.container, timeout=30)
    assert result.returncode == 0, result.stderr


def counts(backend: BpffsBackend, ref: ProgramRef, map_name: str = "calls") -> dict[int, int]:
    entries = bpftool("map", "dump", "pinned", str(backend._dir(ref) / "maps" / map_name))
    found = {}
    for entry in entries:
        key, value = (bytes(int(b, 16) for b in entry[part]) for part in ("key", "value"))
        found[int.from_bytes(key, sys.byteorder)] = int.from_bytes(value, sys.byteorder)
    return found


def _uprobe(binary: str) -> dict[str, str]:
    return {"type": "Uprobe", "binary": binary, "symbol": PROBE_SYMBOL}


def file_link(root: Path) -> str:
    st = os.stat(root / PROBE_TARGET.lstrip("/"))
    return f"file-{st.st_dev}-{st.st_ino}"


def link_pins(backend: BpffsBackend, ref: ProgramRef) -> list[str]:
    links = backend._dir(ref) / "links"
    return sorted(p.name for p in links.iterdir()) if links.exists() else []


def test_the_probe_counts_calls_of_the_selected_pod_only(backend, image, pods_in):
    web, db = pods_in(image), pods_in(image)  # one image: both run the probed file
    loaded = backend.load(REF, CALLS)
    attachment = backend.attach(REF, web.uid, web.pod, UPROBE)
    assert attachment.target_id == web.cgroup_id

    assert link_pins(backend, REF) == [file_link(image)]
    [link] = links_of(loaded.prog_id)
    assert (link["id"], link["type"]) == (attachment.link_id, "perf_event")

    call(web, image, 5)
    call(db, image, 5)
    assert counts(backend, REF) == {web.cgroup_id: 5}


def test_pods_running_one_file_share_one_probe_until_the_last_one_goes(backend, bpffs_root, image, pods_in):
    a, b = pods_in(image), pods_in(image)
    loaded = backend.load(REF, CALLS)
    att_a = backend.attach(REF, a.uid, a.pod, UPROBE)
    att_b = backend.attach(REF, b.uid, b.pod, UPROBE)
    assert att_a.link_id == att_b.link_id
    assert link_pins(backend, REF) == [file_link(image)]
    assert len(links_of(loaded.prog_id)) == 1

    call(a, image, 5)
    call(b, image, 5)
    assert counts(backend, REF) == {a.cgroup_id: 5, b.cgroup_id: 5}  # one probe: never counted twice

    # Another agent on the same pins (a restart) finds both pods on their link.
    adopted = BpffsBackend(bpffs_root).attachments(REF)
    assert {uid: (att.link_id, att.target_id) for uid, att in adopted.items()} == {
        a.uid: (att_a.link_id, a.cgroup_id),
        b.uid: (att_b.link_id, b.cgroup_id),
    }

    backend.detach(REF, a.uid)
    assert link_pins(backend, REF) == [file_link(image)]  # b still runs the file
    call(a, image, 5)
    call(b, image, 5)
    assert counts(backend, REF) == {a.cgroup_id: 5, b.cgroup_id: 10}

    backend.detach(REF, b.uid)
    assert backend.attachments(REF) == {}
    assert link_pins(backend, REF) == []
    wait_until(lambda: links_of(loaded.prog_id) == [], "the probe's link gone")
    call(b, image, 5)
    assert counts(backend, REF) == {a.cgroup_id: 5, b.cgroup_id: 10}


def test_pods_running_different_files_get_a_probe_each_and_unload_removes_them(
    backend, image, other_image, pods_in
):
    a, b = pods_in(image), pods_in(other_image)
    loaded = backend.load(REF, CALLS)
    backend.attach(REF, a.uid, a.pod, UPROBE)
    backend.attach(REF, b.uid, b.pod, UPROBE)
    assert link_pins(backend, REF) == sorted([file_link(image), file_link(other_image)])
    assert len(links_of(loaded.prog_id)) == 2
    call(a, image, 2)
    call(b, other_image, 3)
    assert counts(backend, REF) == {a.cgroup_id: 2, b.cgroup_id: 3}

    backend.unload(REF)
    assert not backend._dir(REF).exists()
    wait_until(lambda: links_of(loaded.prog_id) == [], "every link gone")


def test_attaching_a_pod_again_follows_the_file_it_runs_now(backend, image, other_image, pods_in):
    pod = pods_in(image)
    backend.load(REF, CALLS)
    backend.attach(REF, pod.uid, pod.pod, UPROBE)
    assert link_pins(backend, REF) == [file_link(image)]
    # The container restarts from another image.
    (pod.container / "cgroup.kill").write_text("1")
    wait_until(lambda: "populated 0" in (pod.container / "cgroup.events").read_text(), "the old process gone")
    started: list[subprocess.Popen[bytes]] = []
    try:
        start_container(pod.container, other_image, started)
        backend.attach(REF, pod.uid, pod.pod, UPROBE)
        assert link_pins(backend, REF) == [file_link(other_image)]  # the old file's probe went
        call(pod, other_image, 4)
        assert counts(backend, REF) == {pod.cgroup_id: 4}
    finally:
        for process in started:
            process.kill()
            process.wait(timeout=10)


def test_a_uretprobe_at_a_file_offset_counts_returns(backend, image, pods_in):
    pod = pods_in(image)
    with (image / PROBE_TARGET.lstrip("/")).open("rb") as binary:
        offset = elf.symbol_offset(binary, PROBE_SYMBOL, PROBE_TARGET)
    ret = kernel_attach({"type": "Uretprobe", "binary": PROBE_TARGET, "offset": offset})
    ref = ProgramRef("team-a", "returns", "fedcba9876543210")
    backend.load(ref, ProgramBuild(COUNTER_SOURCE, "count_returns", ret))
    backend.attach(ref, pod.uid, pod.pod, ret)
    call(pod, image, 7)
    assert counts(backend, ref) == {pod.cgroup_id: 7}


def test_a_named_container_picks_the_root_the_binary_is_found_in(backend, image, other_image, pods_in):
    pod = pods_in(image)  # its first container runs the image
    started: list[subprocess.Popen[bytes]] = []
    sidecar_id = "f" * 64
    sidecar = pod.pod / f"cri-containerd-{sidecar_id}.scope"  # sorts after the first container
    sidecar.mkdir()
    try:
        start_container(sidecar, other_image, started)
        backend.load(REF, CALLS)
        backend.attach(REF, pod.uid, pod.pod, UPROBE, container_id=sidecar_id)
        assert link_pins(backend, REF) == [file_link(other_image)]
    finally:
        for process in started:
            process.kill()
            process.wait(timeout=10)


def test_a_missing_binary_symbol_or_process_fails_by_name_and_leaves_nothing(
    backend, image, pods_in, pod_cgroups
):
    pod, empty = pods_in(image), pod_cgroups()
    backend.load(REF, CALLS)
    missing = kernel_attach({"type": "Uprobe", "binary": "/bin/missing", "symbol": PROBE_SYMBOL})
    with pytest.raises(errors.AttachFailed, match=r"^no file /bin/missing in the pod$"):
        backend.attach(REF, pod.uid, pod.pod, missing)
    # The binary is looked up in the pod's root: the host's /bin/sh is not the pod's.
    with pytest.raises(errors.AttachFailed, match=r"^no file /bin/sh in the pod$"):
        backend.attach(REF, pod.uid, pod.pod, kernel_attach(_uprobe("/bin/sh")))
    nosym = kernel_attach({"type": "Uprobe", "binary": PROBE_TARGET, "symbol": "bpfleet_nope"})
    with pytest.raises(errors.ElfError, match=r"^no symbol bpfleet_nope in /bin/target$"):
        backend.attach(REF, pod.uid, pod.pod, nosym)
    with pytest.raises(errors.AttachFailed, match="no process of the pod runs in"):
        backend.attach(REF, empty.uid, empty.pod, UPROBE)
    assert backend.attachments(REF) == {}
    assert link_pins(backend, REF) == []


def test_a_symlink_in_the_pods_root_resolves_inside_it(backend, image, pods_in, tmp_path):
    root = build_probe_root(tmp_path / "linked")
    (root / "usr" / "bin").mkdir(parents=True)
    os.symlink(PROBE_TARGET, root / "usr" / "bin" / "target")  # absolute: /bin/target of the pod
    pod = pods_in(root)
    backend.load(REF, CALLS)
    backend.attach(REF, pod.uid, pod.pod, kernel_attach(_uprobe("/usr/bin/target")))
    assert link_pins(backend, REF) == [file_link(root)]
    call(pod, root, 3)
    assert counts(backend, REF) == {pod.cgroup_id: 3}


LEGACY_PRELUDE = (
    (INCLUDE_DIR / "node_wide_prelude.h")
    .read_text()
    .replace("    __u64 dev;", "")
    .replace("    __u64 ino;", "")
)


@pytest.mark.parametrize("prelude", ["current", "legacy"])
def test_tracepoints_select_pods_on_the_same_map_with_old_and_new_entries(bpffs_root, pod_cgroups, prelude):
    """Programs pinned before the pod entries named a file (48-byte values) keep working."""
    text = (INCLUDE_DIR / "node_wide_prelude.h").read_text() if prelude == "current" else LEGACY_PRELUDE
    assert ("__u64 ino;" in text) == (prelude == "current")
    backend = BpffsBackend(bpffs_root, include_dirs=(INCLUDE_DIR,), node_wide_prelude=text)
    tracepoint = kernel_attach({"type": "Tracepoint", "name": "sched:sched_process_exec"})
    ref = ProgramRef("team-a", "execs", "00000000000000aa")
    loaded = backend.load(ref, ProgramBuild(EXEC_SOURCE, "count_execs", tracepoint))
    web, db = pod_cgroups(), pod_cgroups()
    attachment = backend.attach(ref, web.uid, web.pod, tracepoint)
    assert backend.attachments(ref) == {web.uid: attachment}
    assert link_pins(backend, ref) == ["node"]

    for pod in (web, db):
        assert run_in_cgroup(["/bin/true"], pod.container, timeout=30).returncode == 0
    assert counts(backend, ref, "execs") == {web.cgroup_id: 1}

    backend.detach(ref, web.uid)
    assert backend.attachments(ref) == {}
    assert link_pins(backend, ref) == ["node"]  # a tracepoint's link lives as long as its version
    backend.unload(ref)
    wait_until(lambda: links_of(loaded.prog_id) == [], "the tracepoint link gone")
