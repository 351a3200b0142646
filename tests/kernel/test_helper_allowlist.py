"""The helper allowlist on the real kernel: programs loaded here, read back as the verifier left them.

Small programs are compiled and loaded with BCC in the test process (one compile for all of them)
and never attached; the builtins go through the real compile worker and are pinned under a private
bpffs root. Everything is closed or unpinned when the tests end.
"""

from __future__ import annotations

import ctypes
import os
import struct
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from node_agent.errors import HelperNotAllowed
from node_agent.helper_policy import HELPER, KFUNC, Call
from node_agent.kernel import attach_types as at
from node_agent.kernel import syscalls
from node_agent.kernel.attach_types import kernel_attach
from node_agent.kernel.backend import ProgramBuild, ProgramRef
from node_agent.kernel.bpffs import BpffsBackend
from node_agent.kernel.helper_calls import calls
from node_agent.kernel.helper_check import check_loaded, check_program
from node_agent.kernel.kallsyms import kernel_symbols

pytestmark = pytest.mark.kernel

REPO = Path(__file__).resolve().parents[2]
PROGRAMS = REPO / "bpf" / "programs"
TRACEPOINT, CGROUP_SKB = at.PROG_TYPE_TRACEPOINT, at.PROG_TYPE_CGROUP_SKB


def insn(code: int, src: int = 0, imm: int = 0, dst: int = 0, off: int = 0) -> bytes:
    return struct.pack("=BBhi", code, (src << 4) | dst, off, imm)


RETURN_ZERO = insn(0xB7) + insn(0x95)


SOURCE = r"""
BPF_HASH(counts, u64, u64, 64);
BPF_ARRAY(slots, u64, 8);
BPF_PERCPU_HASH(per_cpu, u64, u64, 64);
BPF_TABLE("lru_hash", u64, u64, recent, 64);
BPF_PROG_ARRAY(jump, 4);

int call_send_signal(void *ctx) { if (bpf_get_prandom_u32() == 7) bpf_send_signal(9); return 0; }
int call_probe_read_kernel(void *ctx) {
    u64 v = 0;
    bpf_probe_read_kernel(&v, sizeof(v), (void *)0xffffffff81000000ULL);
    return v == 1;
}
int call_get_current_task(void *ctx) { return bpf_get_current_task() == 0; }
int call_trace_printk(void *ctx) { bpf_trace_printk("exec\n"); return 0; }
int call_probe_write_user(void *ctx) {
    u64 v = 0;
    bpf_probe_write_user((void *)4096, &v, sizeof(v));
    return 0;
}
int call_probe_read_user(void *ctx) {
    char buf[16];
    bpf_probe_read_user_str(buf, sizeof(buf), (void *)4096);
    bpf_get_current_comm(buf, sizeof(buf));
    return bpf_get_current_pid_tgid() == bpf_get_current_uid_gid();
}

int map_heavy(void *ctx) {
    u64 key = bpf_get_current_cgroup_id(), one = 1, *value;
    int slot = bpf_ktime_get_ns() & 7;
    value = counts.lookup(&key);
    if (value) *value += 1; else counts.update(&key, &one);
    value = slots.lookup(&slot);
    if (value) *value += 1;
    slots.update(&slot, &one);
    per_cpu.update(&key, &one);
    value = per_cpu.lookup(&key);
    if (value) per_cpu.delete(&key);
    recent.update(&key, &one);
    counts.delete(&key);
    recent.delete(&key);
    return 0;
}
int tail_call(void *ctx) { jump.call(ctx, 1); return 0; }

int skb_send_signal(struct __sk_buff *skb) { bpf_send_signal(9); return 1; }
int skb_probe_read_kernel(struct __sk_buff *skb) {
    u64 v = 0;
    bpf_probe_read_kernel(&v, sizeof(v), (void *)0xffffffff81000000ULL);
    return 1;
}
int skb_current_task(struct __sk_buff *skb) { return bpf_get_current_pid_tgid() != 0; }
"""


@pytest.fixture(scope="module")
def program() -> Iterator[Callable[[str, int], int]]:
    """Loads a function of SOURCE as a program of a type; returns its fd (closed at the end)."""
    from bcc import BPF

    bpf = BPF(text=SOURCE.encode())
    try:
        yield lambda function, prog_type: bpf.load_func(function.encode(), prog_type).fd
    finally:
        bpf.cleanup()


def refused_message(helper: str, type_name: str) -> str:
    return (
        f"the program calls bpf_{helper}, which an EbpfProgram of type {type_name} may not use"
        " (a ClusterEbpfProgram can)"
    )


@pytest.mark.parametrize("helper", ["send_signal", "probe_read_kernel", "get_current_task", "trace_printk"])
def test_a_namespaced_tracepoint_may_not_call_powerful_helpers(program: Any, helper: str) -> None:
    fd = program(f"call_{helper}", TRACEPOINT)
    with pytest.raises(HelperNotAllowed) as refused:
        check_program(fd, TRACEPOINT, cluster=False)
    assert refused.value.reason == "HelperNotAllowed"
    assert str(refused.value) == refused_message(helper, "Tracepoint")
    check_program(fd, TRACEPOINT, cluster=True)  # an admin's program may


def test_bpf_probe_write_user_is_refused(program: Any, capfd: pytest.CaptureFixture[str]) -> None:
    """Under this kernel's lockdown the verifier itself refuses bpf_probe_write_user; the check must
    refuse it wherever the verifier does not. Where it cannot be loaded, the call is built from the
    kernel's own address for the helper, as the verifier would have left it."""
    try:
        fd = program("call_probe_write_user", TRACEPOINT)
    except Exception as e:
        assert "call_probe_write_user" in str(e)
        # BCC prints the verifier's log on stderr.
        assert "cannot use helper bpf_probe_write_user" in capfd.readouterr().err
    else:
        with pytest.raises(HelperNotAllowed, match="bpf_probe_write_user"):
            check_program(fd, TRACEPOINT, cluster=False)
    symbols = kernel_symbols()
    [address] = [addr for addr, (_, name) in symbols.helpers.items() if name == "probe_write_user"]
    insns = insn(0x85, imm=address - symbols.call_base) + insn(0x95)
    assert calls(insns, symbols) == [Call(HELPER, "probe_write_user")]


def test_a_tracepoint_may_read_its_own_tasks_user_memory(program: Any) -> None:
    fd = program("call_probe_read_user", TRACEPOINT)
    check_program(fd, TRACEPOINT, cluster=False)
    seen = {call.name for call in calls(syscalls.prog_xlated_insns(fd), kernel_symbols())}
    assert {"probe_read_user_str", "get_current_comm", "get_current_pid_tgid"} <= seen


@pytest.mark.parametrize(
    ("function", "helper"),
    [
        ("skb_send_signal", "send_signal"),
        ("skb_probe_read_kernel", "probe_read_kernel"),
        ("skb_current_task", "get_current_pid_tgid"),
    ],
)
def test_a_namespaced_packet_program_may_not_either(program: Any, function: str, helper: str) -> None:
    # The verifier offers these to cgroup_skb programs of a privileged loader.
    fd = program(function, CGROUP_SKB)
    with pytest.raises(HelperNotAllowed) as refused:
        check_program(fd, CGROUP_SKB, cluster=False)
    assert str(refused.value) == refused_message(helper, "CgroupSkb")
    check_program(fd, CGROUP_SKB, cluster=True)


def test_map_lookups_updates_and_deletes_are_allowed(program: Any) -> None:
    fd = program("map_heavy", TRACEPOINT)
    check_program(fd, TRACEPOINT, cluster=False)
    seen = {call.name for call in calls(syscalls.prog_xlated_insns(fd), kernel_symbols())}
    # Hash, per-CPU hash and LRU operations are calls to the map types' own functions.
    assert {"map_lookup_elem", "map_update_elem", "map_delete_elem", "get_current_cgroup_id"} <= seen


def test_a_tail_call_is_allowed(program: Any) -> None:
    fd = program("tail_call", TRACEPOINT)
    check_program(fd, TRACEPOINT, cluster=False)
    assert Call(HELPER, "tail_call") in calls(syscalls.prog_xlated_insns(fd), kernel_symbols())


def test_check_loaded_checks_every_role(program: Any) -> None:
    tracepoint = kernel_attach({"type": "Tracepoint", "name": "sched:sched_process_exec"})
    progs = {"prog": program("tail_call", TRACEPOINT), "user": program("call_send_signal", TRACEPOINT)}
    with pytest.raises(HelperNotAllowed, match="bpf_send_signal"):
        check_loaded(progs, ProgramBuild("", "f", tracepoint))
    check_loaded(progs, ProgramBuild("", "f", tracepoint, cluster=True))
    check_loaded({"prog": progs["prog"]}, ProgramBuild("", "f", tracepoint))


# -- programs written instruction by instruction: kfuncs and subprograms ------------------------------


@pytest.fixture
def raw_program() -> Iterator[Callable[[bytes], int]]:
    """Loads raw instructions as a tracepoint program; the fds are closed at the end."""
    from bcc.libbcc import lib

    fds: list[int] = []

    def load(insns: bytes) -> int:
        log = ctypes.create_string_buffer(65536)
        fd = lib.bcc_prog_load(TRACEPOINT, b"raw", insns, len(insns), b"GPL", 0, 1, log, len(log))
        assert fd >= 0, log.value.decode(errors="replace")
        fds.append(fd)
        return fd

    try:
        yield load
    finally:
        for fd in fds:
            os.close(fd)


def btf_id(function: str) -> int:
    dump = subprocess.run(
        ["bpftool", "btf", "dump", "file", "/sys/kernel/btf/vmlinux"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout
    [line] = [line for line in dump.splitlines() if f"FUNC '{function}' " in line]
    return int(line.split("]", 1)[0].lstrip("["))


def test_a_kfunc_is_refused_to_a_namespaced_program(raw_program: Callable[[bytes], int]) -> None:
    disable, enable = btf_id("bpf_preempt_disable"), btf_id("bpf_preempt_enable")
    fd = raw_program(insn(0x85, src=2, imm=disable) + insn(0x85, src=2, imm=enable) + RETURN_ZERO)
    assert calls(syscalls.prog_xlated_insns(fd), kernel_symbols()) == [
        Call(KFUNC, "bpf_preempt_disable"),
        Call(KFUNC, "bpf_preempt_enable"),
    ]
    with pytest.raises(HelperNotAllowed) as refused:
        check_program(fd, TRACEPOINT, cluster=False)
    assert str(refused.value).startswith(
        "the program calls the kfunc bpf_preempt_disable and the kfunc bpf_preempt_enable, each of which"
        " an EbpfProgram of type Tracepoint may not use"
    )
    check_program(fd, TRACEPOINT, cluster=True)


def test_a_call_into_the_programs_own_subprogram_is_allowed(raw_program: Callable[[bytes], int]) -> None:
    fd = raw_program(insn(0x85, src=1, imm=2) + RETURN_ZERO + RETURN_ZERO)
    assert calls(syscalls.prog_xlated_insns(fd), kernel_symbols()) == []
    check_program(fd, TRACEPOINT, cluster=False)


# -- every builtin, in its kind and attach type ----------------------------------------------------


def builtin_builds() -> list[Any]:
    """(builtin, function, spec.attach, defines) for every function of every builtin."""
    defaults = {"CgroupSkb": {"direction": "Egress"}, "Tc": {"direction": "Ingress"}}
    builds = []
    for meta_file in sorted(PROGRAMS.glob("*.yaml")):
        meta = yaml.safe_load(meta_file.read_text())
        defines = tuple(
            (name, str(max(1, int(rule.get("minimum", 1)))))
            for name, rule in (meta.get("parameters") or {}).items()
            if rule.get("required")
        )
        for function, attach in meta["functions"].items():
            spec = {**defaults.get(attach["attach"], {}), **attach, "type": attach["attach"]}
            spec.setdefault("binary", "/bin/true")  # uprobes: not needed to load
            name = meta["name"]
            builds.append(pytest.param(name, function, spec, defines, id=f"{name}:{function}"))
    return builds


BUILTINS = builtin_builds()


def test_every_builtin_function_is_covered() -> None:
    assert len({param.values[0] for param in BUILTINS}) == len(list(PROGRAMS.glob("*.c"))) >= 12


@pytest.mark.parametrize(("builtin", "function", "spec", "defines"), BUILTINS)
def test_every_builtin_passes_as_a_namespaced_program(
    backend: BpffsBackend, builtin: str, function: str, spec: dict[str, Any], defines: Any
) -> None:
    attach = kernel_attach(spec)
    source = (PROGRAMS / f"{builtin}.c").read_text()
    build = ProgramBuild(source, function, attach, defines)
    loaded = backend.load(ProgramRef("tenant", builtin, "v1"), build)
    # Role "prog" is pinned as prog, any other role R as prog-R.
    pins = {pin.name.partition("-")[2] or "prog": pin for pin in Path(loaded.pin_dir).glob("prog*")}
    progs = {role: syscalls.obj_get(str(pin)) for role, pin in pins.items()}
    try:
        assert "prog" in progs
        check_loaded(progs, build)
    finally:
        for fd in progs.values():
            os.close(fd)
