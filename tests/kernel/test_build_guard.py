"""A build attaches nothing and reaches no table outside the program, on the real kernel.

BCC's BPF() attaches functions with magic names (kprobe__*, tracepoint__*, TRACEPOINT_PROBE,
RAW_TRACEPOINT_PROBE ...) for as long as the process lives, and opens or creates the pin of a
pinned table. The build switches autoload off and compiles under a seccomp guard; tables that are
pinned, extern, public or shared are refused with MapNotAllowed, however the source spells them.
"""

from __future__ import annotations

import errno
import json
import os
import secrets
import struct
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from bcc import BPF

from e2e.kube import bpftool
from node_agent import errors
from node_agent.kernel import compile_guard, syscalls
from node_agent.kernel.attach_types import PROG_TYPE_CGROUP_SKB
from node_agent.kernel.bcc_build import build, compile_source
from tests.kernel.support import build_request as request
from tests.kernel.support import refusal

pytestmark = pytest.mark.kernel

# A CgroupSkb program whose source also holds every kind of probe BCC would autoload; each probe
# counts into `hits`, which the program's own function uses, so it is handed back with it.
AUTOLOAD_SOURCE = r"""
#include <uapi/linux/ptrace.h>
BPF_ARRAY(hits, u64, 1);

static __always_inline void hit(void) { hits.increment(0); }

TRACEPOINT_PROBE(raw_syscalls, sys_enter) { hit(); return 0; }
RAW_TRACEPOINT_PROBE(sys_exit) { hit(); return 0; }
int tracepoint__syscalls__sys_enter_getppid(void *ctx) { hit(); return 0; }
int raw_tracepoint__sched_switch(void *ctx) { hit(); return 0; }
int kprobe____x64_sys_getppid(struct pt_regs *ctx) { hit(); return 0; }

int allow(struct __sk_buff *skb)
{
    u32 zero = 0;
    u64 *count = hits.lookup(&zero);
    return count && *count > 1000000 ? 0 : 1;
}
"""
AUTOLOAD_NAMES = (
    "tracepoint__raw_syscalls__sys_enter",
    "raw_tracepoint__sys_exit",
    "tracepoint__syscalls__sys_enter_getppid",
    "raw_tracepoint__sched_switch",
    "kprobe____x64_sys_getppid",
)


def attached_by_this_process() -> list[dict[str, Any]]:
    """Perf events and raw tracepoints with a program, held by this process (bpftool perf)."""
    return [event for event in bpftool("perf", "list") or [] if event.get("pid") == os.getpid()]


def link_ids() -> set[int]:
    return {link["id"] for link in bpftool("link", "list") or []}


def program_name(prog_id: int) -> str:
    try:
        return str((bpftool("prog", "show", "id", str(prog_id)) or {}).get("name", ""))
    except Exception:  # gone meanwhile
        return ""


def new_links_of_ours(before: set[int]) -> list[dict[str, Any]]:
    # Other tests may create links meanwhile: only the autoload functions' names count.
    ours = {name[:15] for name in AUTOLOAD_NAMES}
    return [
        link
        for link in bpftool("link", "list") or []
        if link["id"] not in before and program_name(link.get("prog_id", 0)) in ours
    ]


def make_syscalls(times: int = 2000) -> None:
    for _ in range(times):
        os.getppid()
    os.sched_yield()


def counter(fd: int) -> int:
    [(_, value)] = syscalls.map_items(fd, 4, 8)
    return int(struct.unpack("=Q", value)[0])


def test_compiling_attaches_none_of_the_autoload_probes_while_the_module_lives():
    links_before = link_ids()
    bpf = compile_source(request(AUTOLOAD_SOURCE))
    try:
        assert (bpf.tracepoint_fds, bpf.raw_tracepoint_fds, bpf.kprobe_fds, bpf.funcs) == ({}, {}, {}, {})
        make_syscalls()
        assert attached_by_this_process() == []
        assert new_links_of_ours(links_before) == []
        assert counter(bpf[b"hits"].map_fd) == 0
    finally:
        bpf.cleanup()


def test_a_build_hands_back_only_the_function_asked_for_and_nothing_of_it_runs():
    links_before = link_ids()
    built = build(request(AUTOLOAD_SOURCE))
    try:
        assert set(built.progs) == {"prog"}
        assert syscalls.prog_info(built.progs["prog"]).name == "allow"
        make_syscalls()
        assert attached_by_this_process() == []
        assert new_links_of_ours(links_before) == []
        assert counter(built.maps["hits"]) == 0
    finally:
        built.close()


def test_the_guard_denies_pins_attachments_and_mkdir_to_its_thread_only(tmp_path):
    def attempts() -> dict[str, int]:
        found: dict[str, int] = {}
        for name, call in (
            ("obj_get", lambda: syscalls.obj_get("/sys/fs/bpf")),
            ("map_fd_by_id", lambda: syscalls.map_fd_by_id(1)),
            ("perf_event_open", lambda: syscalls.perf_event_open_tracepoint(1)),
            ("mkdir", lambda: os.mkdir(tmp_path / "made")),
        ):
            try:
                call()
                found[name] = 0
            except (errors.KernelError, OSError) as e:
                found[name] = e.errno or -1
        found["map_create"] = int(syscalls.prog_load_probe(PROG_TYPE_CGROUP_SKB))  # loads still work
        return found

    guarded = compile_guard.run_guarded(attempts)
    assert guarded == {
        "obj_get": 1,
        "map_fd_by_id": 1,
        "perf_event_open": 1,
        "mkdir": 1,
        "map_create": 1,
    }  # EPERM each, and the program load allowed
    assert not (tmp_path / "made").exists()
    # The rest of the process is untouched: the same calls get the kernel's own answers.
    unguarded = attempts()
    assert unguarded["mkdir"] == 0 and (tmp_path / "made").is_dir()
    assert unguarded["obj_get"] != 1 and unguarded["perf_event_open"] != 1


# -- tables -------------------------------------------------------------------------------------


USES = "int allow(struct __sk_buff *skb) { u32 k = 0; return @T@.lookup(&k) ? 1 : 0; }\n"
NO_USE = "int allow(struct __sk_buff *skb) { return 1; }\n"
RAW_TABLE = (
    "struct @T@_table_t { u32 key; u64 leaf; u64 *(*lookup)(u32 *); u32 max_entries; int flags; };\n"
    "__attribute__((section(SECTION))) struct @T@_table_t @T@ = { .max_entries = 4 };\n"
)
TABLE_SOURCES = {
    "pinned": ('BPF_TABLE_PINNED("hash", u32, u64, @T@, 16, "@P@");\n', USES, "pinned at @P@"),
    "pinned, unused": ('BPF_TABLE_PINNED("hash", u32, u64, @T@, 16, "@P@");\n', NO_USE, "pinned at @P@"),
    "pinned, renamed macro": (
        "#define CAT(a, b) a##b\n#define KEEP CAT(BPF_TABLE_, PINNED)\n"
        'KEEP("hash", u32, u64, @T@, 16, "@P@");\n',
        NO_USE,
        "pinned at @P@",
    ),
    "pinned, raw section": (
        '#define SECTION "maps/" "hash" ":" "@P@"\n' + RAW_TABLE,
        USES,
        "pinned at @P@",
    ),
    "pinned queue": ('BPF_QUEUESTACK_PINNED("queue", @T@, u64, 16, 0, "@P@");\n', NO_USE, "pinned at @P@"),
    "public": ('BPF_TABLE_PUBLIC("hash", u32, u64, @T@, 16);\n', USES, "public"),
    "shared": ('BPF_TABLE_SHARED("array", u32, u64, @T@, 16);\n', USES, "shared"),
    "public, raw section": (
        'BPF_HASH(@T@, u32, u64, 16);\n#define OUT(k) __attribute__((section("maps/" #k)))\n'
        "OUT(export) struct @T@_table_t __@T@;\n",
        USES,
        "public",
    ),
    "extern": ('BPF_TABLE("extern", u32, u64, @T@, 16);\n', USES, "extern"),
}


# The sources ask for pin paths in `bpffs_root`: nothing may appear in it.
@pytest.mark.parametrize("case", sorted(TABLE_SOURCES))
def test_tables_reaching_outside_the_program_are_refused_by_name(case, bpffs_root):
    declaration, function, what = TABLE_SOURCES[case]
    table = f"t_{secrets.token_hex(3)}"
    pin = bpffs_root / "sub" / "pinned"
    source = (declaration + function).replace("@T@", table).replace("@P@", str(pin))
    failure = refusal(request(source))
    assert failure.reason == "MapNotAllowed", failure.message
    assert f"table {table} is {what.replace('@P@', str(pin))}" in failure.message
    assert list(bpffs_root.iterdir()) == []  # no directory made, nothing pinned


def test_a_pinned_table_never_opens_an_existing_pin(bpffs_root):
    # A map pinned by someone else; a tenant's source names its path to read and write it.
    victim_fd = _pinned_victim(bpffs_root / "victim")
    try:
        source = f'BPF_TABLE_PINNED("array", u32, u64, stolen, 1, "{bpffs_root / "victim"}");\n'
        source += "int allow(struct __sk_buff *skb) { u32 k = 0; u64 *v = stolen.lookup(&k);"
        source += " if (v) *v = 42; return 1; }\n"
        failure = refusal(request(source))
        assert failure.reason == "MapNotAllowed"
        assert "table stolen is pinned at" in failure.message
        assert counter(victim_fd) == 7  # untouched
    finally:
        os.close(victim_fd)


def _pinned_victim(pin: Path) -> int:
    from bcc import BPF

    bpf = BPF(text=b"BPF_ARRAY(victim, u64, 1);")
    table = bpf[b"victim"]
    syscalls.map_update(table.map_fd, struct.pack("=I", 0), struct.pack("=Q", 7))
    syscalls.obj_pin(table.map_fd, str(pin))
    fd = syscalls.obj_get(str(pin))
    bpf.cleanup()
    return fd


def test_private_tables_of_every_usual_kind_build():
    source = (
        "BPF_HASH(h, u32, u64, 16);\nBPF_ARRAY(a, u64, 4);\nBPF_PERCPU_ARRAY(p, u64, 4);\n"
        "BPF_QUEUE(q, u64, 4);\nBPF_STACK_TRACE(st, 16);\nBPF_RINGBUF_OUTPUT(events, 1);\n"
        "int allow(struct __sk_buff *skb) { u32 k = 0; u64 *v = h.lookup(&k); a.increment(1);"
        " p.increment(2); return v ? 0 : 1; }\n"
    )
    built = build(request(source))
    try:
        assert set(built.maps) == {"h", "a", "p"}  # the maps the function uses
    finally:
        built.close()


_GUARDED_MAIN_THREAD = """
import json, sys
from node_agent import errors
from node_agent.kernel import compile_guard, syscalls
compile_guard.guard_this_thread()
try:
    syscalls.obj_get(sys.argv[1])
    print(json.dumps("opened"))
except errors.KernelError as e:
    print(json.dumps(e.errno))
"""


def test_the_workers_main_thread_can_be_guarded_too(bpffs_root):
    """The compile worker guards its main thread as well (code run through it by a hijacked compile
    thread meets the same filter): a pin is out of its reach."""
    pin = bpffs_root / "pinned"
    bpf = BPF(text=b"BPF_ARRAY(pinned, u64, 1);")
    try:
        syscalls.obj_pin(bpf["pinned"].map_fd, str(pin))
        proc = subprocess.run(
            [sys.executable, "-c", _GUARDED_MAIN_THREAD, str(pin)],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        assert json.loads(proc.stdout.strip().splitlines()[-1]) == errno.EPERM
    finally:
        bpf.cleanup()
