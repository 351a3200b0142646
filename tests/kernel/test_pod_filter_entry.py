"""The pod filter of filtered programs is enforced, on the real kernel.

A Tracepoint, Kprobe or Uprobe program for pods is built with the agent's prelude in front: what
gets attached is bpfleet_entry, which tail-calls the user's function only for tasks of the pods in
bpfleet_pods, and bpfleet_pods is read-only for programs. So a program that never calls
bpfleet_pod_selected() still sees only the selected pods, and no program can select a pod itself.
"""

from __future__ import annotations

import os
import struct
import subprocess
from pathlib import Path

import pytest

from e2e.kube import bpftool
from e2e.podsim import run_in_cgroup
from node_agent import errors
from node_agent.kernel import pod_filter, syscalls
from node_agent.kernel.attach_types import kernel_attach
from node_agent.kernel.backend import ProgramBuild, ProgramRef

pytestmark = pytest.mark.kernel

REPO = Path(__file__).resolve().parents[2]
EXEC = kernel_attach({"type": "Tracepoint", "name": "sched:sched_process_exec"})
REF = ProgramRef("team-a", "every-exec", "00000000000000ee")

# Counts every exec it sees, by pod; it never asks whether the pod is selected.
EVERY_EXEC = """
BPF_HASH(execs, __u64, __u64, 1024);

int count_every_exec(void *ctx)
{
    __u64 pod = bpfleet_current_pod_cgroup_id();
    execs.increment(pod);
    return 0;
}
"""


def exec_counts(pin_dir: Path) -> dict[int, int]:
    with syscalls.closing_fd(syscalls.obj_get(str(pin_dir / "maps" / "execs"))) as fd:
        return {
            struct.unpack("=Q", key)[0]: struct.unpack("=Q", value)[0]
            for key, value in syscalls.map_items(fd, 8, 8)
        }


def attach_entry(pin_dir: Path, tracefs: Path) -> int:
    """Attaches role "prog" to the tracepoint the way the agent does; returns the link fd."""
    event_id = int((tracefs / "events" / "sched" / "sched_process_exec" / "id").read_text())
    with (
        syscalls.closing_fd(syscalls.perf_event_open_tracepoint(event_id)) as perf_fd,
        syscalls.closing_fd(syscalls.obj_get(str(pin_dir / "prog"))) as prog_fd,
    ):
        return syscalls.link_create_perf_event(prog_fd, perf_fd)


def exec_in(cgroup: Path) -> None:
    assert run_in_cgroup(["/bin/true"], cgroup, timeout=30).returncode == 0


def test_a_program_that_never_filters_still_sees_only_the_selected_pods(backend, pod_cgroups):
    loaded = backend.load(REF, ProgramBuild(EVERY_EXEC, "count_every_exec", EXEC))
    pin_dir = Path(loaded.pin_dir)
    with syscalls.closing_fd(syscalls.obj_get(str(pin_dir / "prog"))) as fd:
        assert syscalls.prog_info(fd).name == "bpfleet_entry"  # the filter is what runs
    selected, other = pod_cgroups(), pod_cgroups()
    pod_filter.put(
        pin_dir / "maps" / pod_filter.MAP_NAME, pod_filter.PodEntry(selected.uid, selected.cgroup_id)
    )

    link_fd = attach_entry(pin_dir, backend.tracefs)
    try:
        exec_in(selected.container)
        exec_in(other.container)
        assert subprocess.run(["/bin/true"], check=False).returncode == 0  # on the host
        # Every exec of the node passed the tracepoint meanwhile; the selected pod's alone counted.
        assert exec_counts(pin_dir) == {selected.cgroup_id: 1}

        pod_filter.remove(pin_dir / "maps" / pod_filter.MAP_NAME, selected.cgroup_id)
        exec_in(selected.container)
        assert exec_counts(pin_dir) == {selected.cgroup_id: 1}  # no longer selected: not counted
    finally:
        os.close(link_fd)  # the link's only reference: closing it detaches (perf links have no detach)
    backend.unload(REF)


def test_the_users_function_sits_in_the_filters_slot_after_the_worker_is_gone(backend):
    loaded = backend.load(REF, ProgramBuild(EVERY_EXEC, "count_every_exec", EXEC))
    [slot] = bpftool("map", "dump", "pinned", str(Path(loaded.pin_dir) / "maps" / "bpfleet_progs"))
    user = bpftool(
        "prog", "show", "id", str(int.from_bytes(bytes(int(b, 16) for b in slot["value"]), "little"))
    )
    assert user["name"] == "count_every_exec"
    assert user["type"] == "tracepoint"
    backend.unload(REF)


@pytest.mark.parametrize(
    "write",
    [
        "struct bpfleet_pod entry = {}; bpfleet_pods.update(&pod, &entry);",
        "bpfleet_pods.delete(&pod);",
        "struct bpfleet_pod *entry = bpfleet_pods.lookup(&pod); if (entry) entry->ino = 1;",
    ],
    ids=["update", "delete", "through a lookup"],
)
def test_no_program_can_select_a_pod(backend, write):
    source = (
        f"int select_me(void *ctx) {{ __u64 pod = bpfleet_current_pod_cgroup_id(); {write} return 0; }}\n"
    )
    with pytest.raises(errors.VerifierRejected, match="write into map forbidden"):
        backend.load(REF, ProgramBuild(source, "select_me", EXEC))
    assert backend.loaded() == {}


def test_the_agents_function_names_are_refused(backend):
    source = "int count_every_exec(void *ctx) { return 0; }\n"
    with pytest.raises(errors.FunctionNotFound, match="names starting with bpfleet_ are reserved"):
        backend.load(REF, ProgramBuild(source, "bpfleet_entry", EXEC))


@pytest.mark.parametrize(
    ("builtin", "function", "attach"),
    [
        ("exec-counter", "count_execs", {"type": "Tracepoint", "name": "sched:sched_process_exec"}),
        ("syscall-counter", "count_syscalls", {"type": "Tracepoint", "name": "raw_syscalls:sys_enter"}),
        ("uprobe-call-counter", "count_calls", {"type": "Uprobe", "binary": "/bin/true", "symbol": "main"}),
    ],
)
def test_builtins_that_call_the_filter_themselves_build_behind_it(backend, builtin, function, attach):
    source = (REPO / "bpf" / "programs" / f"{builtin}.c").read_text()
    loaded = backend.load(REF, ProgramBuild(source, function, kernel_attach(attach)))
    with syscalls.closing_fd(syscalls.obj_get(str(Path(loaded.pin_dir) / "prog"))) as fd:
        assert syscalls.prog_info(fd).name == "bpfleet_entry"
    assert {"bpfleet_pods", "bpfleet_progs"} <= set(loaded.maps)
    backend.unload(REF)
