"""Bytecode (CO-RE ELF objects) loaded with libbpf in the sandboxed compile worker, on the real kernel.

The same road as C: the worker loads, the agent checks the loaded instructions and the maps, pins,
attaches through the same links. Only the spec's function is loaded, with the spec's program type;
parameters set `.rodata` globals; CO-RE relocations resolve against this kernel's BTF.
"""

from __future__ import annotations

import os
import struct
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from e2e.sim_cgroups import run_in_cgroup
from node_agent import errors
from node_agent.kernel import syscalls
from node_agent.kernel.attach_types import KernelAttach, kernel_attach
from node_agent.kernel.backend import Bytecode, LoadedProgram, ProgramBuild, ProgramRef
from node_agent.kernel.bpffs import BpffsBackend
from tests.kernel.bytecode_objects import Objects
from tests.kernel.support import EGRESS, bpftool

pytestmark = pytest.mark.kernel

REF = ProgramRef("team-a", "bytecode", "00000000000000b1")
POD_EXEC = kernel_attach({"type": "Tracepoint", "name": "sched:sched_process_exec"})
NODE_EXEC = kernel_attach({"type": "Tracepoint", "name": "sched:sched_process_exec"}, scope="Node")
SEND = "import socket,sys\ns=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\n" + (
    "for _ in range(int(sys.argv[1])): s.sendto(b'x'*32, ('127.0.0.1', 9))"
)


def bytecode_build(data: bytes, function: str, attach: KernelAttach = EGRESS, **extra: Any) -> ProgramBuild:
    return ProgramBuild("", function, attach, bytecode=Bytecode(data=data), **extra)


def send_udp(cgroup: Path, count: int) -> None:
    result = run_in_cgroup([sys.executable, "-c", SEND, str(count)], cgroup, timeout=30)
    assert result.returncode == 0, result.stderr


def counts(loaded: LoadedProgram) -> tuple[int, int]:
    """(packets, label) of the counter object's `packets` map, read through its pin."""
    with syscalls.closing_fd(syscalls.obj_get(f"{loaded.pin_dir}/maps/packets")) as fd:
        [(_key, value)] = syscalls.map_items(fd, 4, 16)
    packets, label = struct.unpack("=QQ", value)
    return packets, label


def test_a_cgroup_skb_counter_loads_in_the_sandbox_attaches_and_counts_its_pods_traffic(
    bytecode_backend: BpffsBackend, objects: Objects, pod_cgroups
):
    pod = pod_cgroups()
    loaded = bytecode_backend.load(REF, bytecode_build(objects["counter"], "count_egress"))
    assert sorted(os.listdir(Path(loaded.pin_dir, "maps"))) == ["packets"]  # the used map, no .rodata
    bytecode_backend.attach(REF, pod.uid, pod.pod, EGRESS)
    send_udp(pod.container, 7)
    send_udp(pod_cgroups().container, 5)  # another pod's cgroup: not attached there
    assert counts(loaded) == (7, ord("n"))  # STEP 1 and LABEL "none", as compiled
    bytecode_backend.unload(REF)
    assert not Path(loaded.pin_dir).exists()


def test_parameters_set_the_objects_rodata_globals(bytecode_backend, objects, pod_cgroups):
    pod = pod_cgroups()
    # As the agent gets them from a spec: defines, strings as JSON literals.
    build = bytecode_build(objects["counter"], "count_egress", defines=(("LABEL", '"xyz"'), ("STEP", "3")))
    loaded = bytecode_backend.load(REF, build)
    bytecode_backend.attach(REF, pod.uid, pod.pod, EGRESS)
    send_udp(pod.container, 4)
    assert counts(loaded) == (12, ord("x"))
    bytecode_backend.unload(REF)


@pytest.mark.parametrize(
    ("name", "function", "known"),
    [("counter", "count_egress", "LABEL, STEP"), ("huge", "refused", "none")],  # the last: no .rodata
)
def test_a_parameter_the_object_has_no_global_for_is_refused_by_name(
    bytecode_backend, objects, name, function, known
):
    build = bytecode_build(objects[name], function, defines=(("PORT", "53"),))
    with pytest.raises(
        errors.CompileError, match=rf"parameter PORT: .*no `const volatile` global PORT.*{known}"
    ):
        bytecode_backend.load(REF, build)
    assert bytecode_backend.loaded() == {}


def test_only_the_specs_function_loads_and_with_the_specs_program_type(bytecode_backend, objects):
    # other_program's section says kprobe; the spec says CgroupSkb, and only it is loaded.
    before = {p["id"] for p in bpftool("prog", "show")}
    loaded = bytecode_backend.load(REF, bytecode_build(objects["counter"], "other_program"))
    new = [p for p in bpftool("prog", "show") if p["id"] not in before]
    assert [(p["name"], p["type"]) for p in new] == [("other_program", "cgroup_skb")]
    assert new[0]["id"] == loaded.prog_id
    assert loaded.maps == ("unused_other",)
    bytecode_backend.unload(REF)


def tgid_offset() -> int:
    """Where this kernel's BTF puts task_struct.tgid, in bytes."""
    raw = subprocess.run(
        ["bpftool", "btf", "dump", "file", "/sys/kernel/btf/vmlinux", "format", "raw"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    task = raw[raw.index("STRUCT 'task_struct' size") :]
    member = task[task.index("'tgid' ") :].split("\n", 1)[0]
    return int(member.rsplit("bits_offset=", 1)[1]) // 8


def test_a_tenants_co_re_relocation_resolves_against_this_kernels_btf(bytecode_backend, objects, pod_cgroups):
    # Compiled for a task_struct with tgid at offset 4; the sandbox of a tenant's build shows no
    # /sys, and libbpf reads the kernel's BTF through the fd the worker opened before entering it.
    pod = pod_cgroups()
    loaded = bytecode_backend.load(REF, bytecode_build(objects["counter"], "core_offset"))
    bytecode_backend.attach(REF, pod.uid, pod.pod, EGRESS)
    send_udp(pod.container, 1)
    assert counts(loaded)[1] == tgid_offset() != 4
    bytecode_backend.unload(REF)


def test_a_co_re_read_of_a_task_field_loads_and_reads_the_right_field(bytecode_backend, objects):
    # BPF_CORE_READ(task, tgid): relocated against this kernel's BTF, which the sandbox reads
    # through the fd the worker opened before entering it. Reading the kernel is for cluster admins.
    ref = ProgramRef("_cluster", "core", "00000000000000c0")
    loaded = bytecode_backend.load(
        ref, bytecode_build(objects["tracing"], "record_tgid", NODE_EXEC, cluster=True)
    )
    bytecode_backend.attach_node(ref, "node", NODE_EXEC)
    proc = subprocess.run(
        ["/bin/sh", "-c", "echo $$; exec /bin/true"], capture_output=True, text=True, check=True
    )
    pid = int(proc.stdout)  # the shell's pid is the tgid of the exec
    with syscalls.closing_fd(syscalls.obj_get(f"{loaded.pin_dir}/maps/execs")) as fd:
        tgids = {struct.unpack("=Q", key)[0] for key, _ in syscalls.map_items(fd, 8, 8)}
    assert pid in tgids
    bytecode_backend.unload(ref)


def test_a_map_pinned_by_name_is_refused(bytecode_backend, objects):
    with pytest.raises(errors.MapNotAllowed, match=r"map shared_counts is pinned"):
        bytecode_backend.load(REF, bytecode_build(objects["pinned"], "refused"))
    assert not Path("/sys/fs/bpf/shared_counts").exists()


def test_the_agents_own_map_names_are_refused(bytecode_backend, objects):
    with pytest.raises(
        errors.MapNotAllowed, match=r"bpfleet_pods: names starting with bpfleet_ are reserved"
    ):
        bytecode_backend.load(REF, bytecode_build(objects["own-name"], "refused"))


def test_a_helper_tenants_may_not_call_is_refused_behind_the_pod_filter_too(bytecode_backend, objects):
    # The verifier lets a tracepoint read the kernel; an EbpfProgram may not: the agent reads the
    # user's program back from the kernel (role "user", behind the filter) and refuses it.
    with pytest.raises(
        errors.HelperNotAllowed, match=r"bpf_get_current_task.*EbpfProgram of type Tracepoint"
    ):
        bytecode_backend.load(REF, bytecode_build(objects["tracing"], "record_tgid", POD_EXEC))
    assert bytecode_backend.loaded() == {}


@pytest.mark.parametrize(
    ("name", "named"), [("ksym", "bpf_prog_active"), ("kfunc", "bpf_rcu_read_lock, bpf_rcu_read_unlock")]
)
def test_kernel_symbols_and_kfuncs_are_refused_for_tenants(bytecode_backend, objects, name, named):
    with pytest.raises(
        errors.HelperNotAllowed, match=rf"kernel symbols or kfuncs \({named}\): an EbpfProgram"
    ):
        bytecode_backend.load(REF, bytecode_build(objects[name], "refused"))


def test_a_cluster_program_may_call_kfuncs(bytecode_backend, objects):
    # libbpf resolves kfuncs in the kernel's BTF, which the sandbox shows to cluster builds only.
    ref = ProgramRef("_cluster", "kfunc", "00000000000000cf")
    loaded = bytecode_backend.load(ref, bytecode_build(objects["kfunc"], "refused", cluster=True))
    assert loaded.prog_id > 0
    bytecode_backend.unload(ref)


def test_maps_over_the_cap_are_refused_internal_ones_counted(bytecode_backend, objects):
    with pytest.raises(
        errors.MapTooLarge, match=r"map huge needs 4\.\d MiB; this program's maps may use 1\.0 MiB"
    ):
        bytecode_backend.load(REF, bytecode_build(objects["huge"], "refused", max_map_bytes=1 << 20))
    # .rodata is memory too: the counter's maps fit 16 KiB only without it.
    with pytest.raises(errors.MapTooLarge, match=r"prog\.rodata"):
        bytecode_backend.load(REF, bytecode_build(objects["counter"], "count_egress", max_map_bytes=4096))


def test_a_verifier_refusal_shows_the_verifiers_log(bytecode_backend, objects):
    with pytest.raises(errors.VerifierRejected) as refused:
        bytecode_backend.load(REF, bytecode_build(objects["counter"], "unchecked"))
    assert "map_value_or_null" in str(refused.value)
    assert "processed" in str(refused.value) or "R0" in str(refused.value)


def test_a_long_verifier_log_keeps_its_end_where_the_verifier_says_why(bytecode_backend, objects):
    with pytest.raises(errors.VerifierRejected) as refused:
        bytecode_backend.load(REF, bytecode_build(objects["counter"], "unchecked_at_the_end"))
    message = str(refused.value)
    assert message.startswith("…")  # cut, at its start
    assert "map_value_or_null" in message[-4096:]


@pytest.mark.parametrize(
    ("data", "function", "error", "message"),
    [
        (b"#include <vmlinux.h>\n", "count_egress", errors.CompileError, "not an ELF object"),
        (b"\x7fELF\x02\x01\x01" + bytes(11) + b"\x3e\x00" + bytes(44), "f", errors.CompileError, "not BPF"),
        (None, "no_such_function", errors.FunctionNotFound, "no program named 'no_such_function'"),
        (None, "bpfleet_entry", errors.FunctionNotFound, "reserved for the agent"),
    ],
    ids=["text", "x86 ELF", "missing function", "agent's name"],
)
def test_what_is_no_program_of_the_object_is_refused_plainly(
    bytecode_backend, objects, data, function, error, message
):
    with pytest.raises(error, match=message):
        bytecode_backend.load(REF, bytecode_build(data or objects["counter"], function))
