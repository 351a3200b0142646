"""Bytecode behind the agent's pod filter, and bytecode maps carried across an update, on the real kernel.

A Tracepoint program for pods runs only through the agent's prebuilt entry (bpf/bytecode/
bpfleet_entry.bpf.c): the same bpfleet_pods and bpfleet_progs as the BCC prelude, written by the same
pod_filter code, the user's program in slot 0. A new version of a bytecode program keeps each map
whose layout (kernel figures and BTF types) is unchanged, and starts a changed one empty.
"""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from e2e.podsim import PROBE_SYMBOL, PROBE_TARGET, build_probe_root, spawn_in_cgroup, wait_chrooted
from e2e.sim_cgroups import run_in_cgroup
from node_agent.kernel import pod_filter, syscalls
from node_agent.kernel.attach_types import kernel_attach
from node_agent.kernel.backend import ProgramRef
from tests.kernel.support import EGRESS, bpftool
from tests.kernel.test_bytecode_load import POD_EXEC, bytecode_build, counts, send_udp

pytestmark = pytest.mark.kernel

V1, V2, V3 = (ProgramRef("team-a", "bc", f"00000000000000{n}") for n in ("a1", "a2", "a3"))


UPROBE = kernel_attach({"type": "Uprobe", "binary": PROBE_TARGET, "symbol": PROBE_SYMBOL})


def exec_counts(pin_dir: Path, name: str = "execs") -> dict[int, int]:
    with syscalls.closing_fd(syscalls.obj_get(str(pin_dir / "maps" / name))) as fd:
        return {struct.unpack("=Q", k)[0]: struct.unpack("=Q", v)[0] for k, v in syscalls.map_items(fd, 8, 8)}


def exec_in(cgroup: Path) -> None:
    assert run_in_cgroup(["/bin/true"], cgroup, timeout=30).returncode == 0


def test_a_tracepoint_program_for_pods_counts_only_tasks_of_selected_pods(
    bytecode_backend, objects, pod_cgroups
):
    loaded = bytecode_backend.load(V1, bytecode_build(objects["tracing"], "count_every_exec", POD_EXEC))
    pin_dir = Path(loaded.pin_dir)
    assert sorted(loaded.maps) == ["bpfleet_pods", "bpfleet_progs", "execs"]
    with syscalls.closing_fd(syscalls.obj_get(str(pin_dir / "prog"))) as fd:
        assert syscalls.prog_info(fd).name == "bpfleet_entry"  # the filter is what gets attached
    [slot] = bpftool("map", "dump", "pinned", str(pin_dir / "maps" / "bpfleet_progs"))
    user = bpftool(
        "prog", "show", "id", str(int.from_bytes(bytes(int(b, 16) for b in slot["value"]), "little"))
    )
    assert (user["name"], user["type"]) == ("count_every_exec", "tracepoint")
    # Read-only for programs, as the prelude's.
    assert bpftool("map", "show", "pinned", str(pin_dir / "maps" / "bpfleet_pods"))["flags"] == 1 << 7

    selected, other = pod_cgroups(), pod_cgroups()
    pods = pin_dir / "maps" / pod_filter.MAP_NAME
    pod_filter.put(pods, pod_filter.PodEntry(selected.uid, selected.cgroup_id))
    assert [e.uid for e in pod_filter.entries(pods)] == [selected.uid]
    bytecode_backend.attach(V1, selected.uid, selected.pod, POD_EXEC)
    try:
        exec_in(selected.container)
        exec_in(other.container)
        exec_in(selected.container)
        # Every exec of the node passed the tracepoint; only the selected pod's reached the program.
        assert exec_counts(pin_dir) == {syscalls_cgroup_id(selected.container): 2}
    finally:
        bytecode_backend.unload(V1)


def syscalls_cgroup_id(cgroup: Path) -> int:
    return cgroup.stat().st_ino


def test_an_update_keeps_maps_of_the_same_layout_and_resets_changed_ones(
    bytecode_backend, objects, pod_cgroups
):
    pod = pod_cgroups()
    one = bytecode_backend.load(V1, bytecode_build(objects["counter"], "count_egress"))
    bytecode_backend.attach(V1, pod.uid, pod.pod, EGRESS)
    send_udp(pod.container, 5)
    assert counts(one)[0] == 5

    # Another object (STEP 2), the same `packets` layout: the very map, contents and all.
    two = bytecode_backend.load(V2, bytecode_build(objects["counter-v2"], "count_egress"), V1)
    assert (two.kept_maps, two.reset_maps) == (("packets",), ())
    bytecode_backend.update(V1, V2, pod.uid, pod.pod, EGRESS)
    bytecode_backend.unload(V1)
    send_udp(pod.container, 3)
    assert counts(two)[0] == 5 + 3 * 2

    # struct counts has other members, of the same size: only BTF tells, and the map starts empty.
    three = bytecode_backend.load(V3, bytecode_build(objects["counter-changed"], "count_egress"), V2)
    assert (three.kept_maps, three.reset_maps) == ((), ("packets",))
    with syscalls.closing_fd(syscalls.obj_get(f"{three.pin_dir}/maps/packets")) as fd:
        [(_key, value)] = syscalls.map_items(fd, 4, 16)
    assert value == bytes(16)
    bytecode_backend.unload(V2)
    bytecode_backend.unload(V3)


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_probe_root(tmp_path_factory.mktemp("image"))


def test_a_uprobe_program_for_pods_counts_only_calls_of_selected_pods(
    bytecode_backend, objects, pod_cgroups, image
):
    web, db = pod_cgroups(), pod_cgroups()
    sleepers = [
        spawn_in_cgroup(["chroot", str(image), PROBE_TARGET, "sleep"], pod.container) for pod in (web, db)
    ]
    try:
        for sleeper in sleepers:
            wait_chrooted(sleeper.pid, image)
        loaded = bytecode_backend.load(V1, bytecode_build(objects["tracing"], "count_calls", UPROBE))
        with syscalls.closing_fd(syscalls.obj_get(f"{loaded.pin_dir}/prog")) as fd:
            assert (syscalls.prog_info(fd).name, syscalls.prog_info(fd).type) == (
                "bpfleet_entry",
                2,
            )  # kprobe
        bytecode_backend.attach(V1, web.uid, web.pod, UPROBE)
        for pod in (web, db):
            argv = ["chroot", str(image), PROBE_TARGET, "call", "4"]
            assert run_in_cgroup(argv, pod.container, timeout=30).returncode == 0
        assert exec_counts(Path(loaded.pin_dir), "calls") == {syscalls_cgroup_id(web.container): 4}
    finally:
        for sleeper in sleepers:
            sleeper.kill()
            sleeper.wait(timeout=10)
        bytecode_backend.unload(V1)
