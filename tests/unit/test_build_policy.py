"""The pure parts of a safe build: what diagnostics users read, which tables are refused, the map
memory message, reserved names, the compile guard's filter, and versions of filtered programs."""

from __future__ import annotations

import hashlib
import json
import struct

import pytest

from node_agent.kernel import compile_guard, map_memory, table_policy
from node_agent.kernel.attach_types import kernel_attach
from node_agent.kernel.backend import ProgramBuild
from node_agent.kernel.bcc_build import BuildFailure, build
from node_agent.kernel.compiler_output import user_diagnostics
from node_agent.model import program_version

# -- diagnostics ----------------------------------------------------------------------------------

CLANG_OUTPUT = """\
In file included from program.c:3:
In file included from /usr/src/linux-headers/include/linux/sched.h:10:
                 from /etc/planted.h:2:
/etc/planted.h:1:1: error: unknown type name 'SECRET'
SECRET stuff
^
/etc/planted.h:1:7: error: expected ';'
SECRET stuff
      ^
/virtual/include/bcc/helpers.h:98:1: note: expanded from macro 'BPF_F_TABLE'
struct _name##_table_t { \\
^
program.c:7:5: error: use of undeclared identifier 'x'
    x = 1;
    ^
/virtual/main.c:12:1: warning: the prelude warns
int bpfleet_entry(void *ctx)
^
3 errors and 1 warning generated.
could not open bpf map: trie, error: Invalid argument
failed to open /sys/fs/bpf/secret/path
; ModuleID = 'sscanf'
source_filename = "/virtual/main.c"
"""


def test_only_the_users_own_lines_are_shown():
    assert user_diagnostics(CLANG_OUTPUT) == "\n".join(
        [
            "program.c:3: included here",
            "<a file outside the program>: error elided (2 times)",
            "program.c:7:5: error: use of undeclared identifier 'x'",
            "    x = 1;",
            "    ^",
            "<a file outside the program>: warning elided",
            "3 errors and 1 warning generated.",
            "could not open bpf map: trie, error: Invalid argument",
            "failed to open <a file outside the program>",
        ]
    )


def test_without_a_prelude_bccs_main_file_is_the_users():
    output = "/virtual/main.c:2:3: error: boom\n  boom;\n  ^\nIn file included from /virtual/main.c:1:\n"
    assert user_diagnostics(output, main_is_user=True) == (
        "program.c:2:3: error: boom\n  boom;\n  ^\nprogram.c:1: included here"
    )
    assert "boom;" not in user_diagnostics(output)  # with a prelude, main.c is the agent's text


# -- tables ---------------------------------------------------------------------------------------

IR = """\
@plain = dso_local global %struct.plain_table_t { i32 16, i32 0 }, section "maps/hash", align 8
@pinned = dso_local global %struct.pinned_table_t zeroinitializer, section "maps/hash:/sys/fs/bpf/x", align 8
@hidden = dso_local global %struct.t zeroinitializer, section "maps/array\\3A/sys/fs/bpf/y", align 8
@__pub = dso_local global %struct.pub_table_t zeroinitializer, section "maps/export", align 8
@__sh = dso_local global %struct.sh_table_t zeroinitializer, section "maps/shared", align 8
@ext = dso_local global %struct.ext_table_t zeroinitializer, section "maps/extern", align 8
@decoy = dso_local global [10 x i8] c", section ", align 1
@decoy2 = dso_local global [22 x i8] c"x\\22, section \\22maps/export", align 1
@____btf_map_plain = dso_local global %struct.b zeroinitializer, section ".maps.plain", align 8
define dso_local i32 @f(i8* %0) section ".bpf.fn.f" {
"""


def test_tables_are_read_from_the_sections_of_the_modules_globals():
    assert table_policy.refusals_in_ir(IR) == [
        table_policy.Refusal("pinned", "pinned at /sys/fs/bpf/x"),
        table_policy.Refusal("hidden", "pinned at /sys/fs/bpf/y"),
        table_policy.Refusal("pub", "public"),
        table_policy.Refusal("sh", "shared"),
        table_policy.Refusal("ext", "extern"),
    ]


def test_bccs_traces_of_a_pin_attempt_are_refusals_too():
    output = (
        "failed to mkdir /sys/fs/bpf/p: Operation not permitted\n"
        "main.c:3:1: error: bpf_table t failed to open\n"
    )
    assert table_policy.refusals_in_output(output) == [table_policy.Refusal("t", "pinned at /sys/fs/bpf/p")]
    assert table_policy.refusals_in_output("failed to mkdir /x/y: Operation not permitted\n") == [
        table_policy.Refusal("", "pinned at /x/y")
    ]
    assert table_policy.refusals_in_output("program.c:1:1: error: reference to undefined table\n") == [
        table_policy.Refusal("", "extern")
    ]
    assert table_policy.refusals_in_output("program.c:1:1: error: something else\n") == []
    message = table_policy.message([table_policy.Refusal("t", "public"), table_policy.Refusal("", "extern")])
    assert message.startswith("table t is public; a table is extern: a program's tables must be its own")


# -- map memory -----------------------------------------------------------------------------------


def test_sizes_read_the_way_people_do():
    assert [map_memory.human(n) for n in (100, 12 * 1024, 800 * 2**20, 3 * 2**30 // 2)] == [
        "100 B",
        "12.0 KiB",
        "800.0 MiB",
        "1.5 GiB",
    ]


def test_the_refusal_names_the_largest_maps_the_total_and_the_limit():
    assert map_memory.over_cap({"a": 10, "b": 20}, 30) is None
    assert map_memory.over_cap({"big_array": 800 * 2**20}, 64 * 2**20) == (
        "map big_array needs 800.0 MiB; this program's maps may use 64.0 MiB in all"
    )
    sizes = {"a": 3 * 2**20, "b": 2**20, "c": 2 * 2**20, "d": 512, "e": 1024}
    assert map_memory.over_cap(sizes, 2**20) == (
        "maps a 3.0 MiB, c 2.0 MiB, b 1.0 MiB and 2 more need 6.0 MiB in all; "
        "this program's maps may use 1.0 MiB in all"
    )


# -- reserved names -------------------------------------------------------------------------------


def request(**fields: object) -> dict[str, object]:
    return {
        "source": "",
        "function": "f",
        "progType": 5,
        "attachType": -1,
        "includeDirs": [],
        "cflags": [],
        **fields,
    }


@pytest.mark.parametrize(
    ("fields", "reason", "says"),
    [
        ({"function": "bpfleet_entry"}, "FunctionNotFound", "names starting with bpfleet_ are reserved"),
        ({"function": "BPFLEET_mine"}, "FunctionNotFound", "names starting with bpfleet_ are reserved"),
        ({"cflags": ["-DBPFLEET_MAX_CGROUP_LEVEL=0"]}, "CompileError", "parameter BPFLEET_MAX_CGROUP_LEVEL"),
        ({"entryPoint": True, "prelude": ""}, "CompileError", "no pod filter"),
    ],
)
def test_what_is_the_agents_is_refused_before_any_compile(fields, reason, says):
    with pytest.raises(BuildFailure) as failure:
        build(request(**fields))
    assert failure.value.reason == reason
    assert says in failure.value.message


# -- the compile guard's filter ---------------------------------------------------------------------


def run_filter(program: bytes, arch: int, nr: int, arg0: int = 0) -> int:
    """Runs a seccomp classic-BPF program on one struct seccomp_data; returns its verdict."""
    data = struct.pack("=iIQ6Q", nr, arch, 0, arg0, 0, 0, 0, 0, 0)
    insns = [struct.unpack_from("=HBBI", program, i) for i in range(0, len(program), 8)]
    pc, acc = 0, 0
    while True:
        code, jt, jf, k = insns[pc]
        if code == 0x20:  # ld [k]
            acc = struct.unpack_from("=I", data, k)[0]
        elif code == 0x06:  # ret k
            return k
        elif code in (0x15, 0x35):  # jeq / jge k
            taken = acc == k if code == 0x15 else acc >= k
            pc += jt if taken else jf
        pc += 1


ALLOW, EPERM = 0x7FFF0000, 0x00050000 | 1


@pytest.mark.parametrize("machine", sorted(compile_guard._ARCHES))
def test_the_guard_lets_a_compile_through_and_nothing_else(machine):
    arch = compile_guard._ARCHES[machine]
    program = compile_guard.filter_program(arch)
    verdict = lambda nr, arg0=0: run_filter(program, arch.audit_arch, nr, arg0)  # noqa: E731
    for cmd in (0, 1, 2, 3, 4, 5, 15, 18, 22):  # maps, program and BTF loads, info
        assert verdict(arch.bpf, cmd) == ALLOW
    for cmd in (6, 7, 8, 13, 14, 17, 19, 28, 29, 30, 34, 36):  # pins, by-id, attach, links
        assert verdict(arch.bpf, cmd) == EPERM
    for nr in arch.denied:  # perf_event_open, mkdir
        assert verdict(nr) == EPERM
    assert verdict(0) == ALLOW and verdict(1) == ALLOW  # everything else
    assert run_filter(program, 0x40000003, 1) == EPERM  # another ABI
    if arch.syscall_bit:
        assert verdict(arch.syscall_bit | arch.bpf, 7) == EPERM


# -- versions -------------------------------------------------------------------------------------


def previous_version(build: ProgramBuild) -> str:
    """program_version before the enforced filter, for attach types without extra fields."""
    attach = build.attach
    fields = [build.source, build.function, attach.prog_type, attach.attach_type, attach.target]
    fields += [attach.side, attach.flags, build.defines]
    return hashlib.sha256(json.dumps(fields).encode()).hexdigest()[:16]


def test_filtered_programs_get_new_versions_and_the_others_keep_theirs():
    tracepoint = ProgramBuild(
        "src", "f", kernel_attach({"type": "Tracepoint", "name": "sched:sched_process_exec"})
    )
    skb = ProgramBuild("src", "f", kernel_attach({"type": "CgroupSkb", "direction": "Egress"}))
    assert program_version(tracepoint) != previous_version(tracepoint)  # nodes rebuild behind the filter
    assert program_version(skb) == previous_version(skb)
