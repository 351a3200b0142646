"""From kernel symbols to helper names, from /proc/kallsyms text to addresses, and from translated
instructions to calls: on a small fake kallsyms and hand-made instructions."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from node_agent.errors import KernelError
from node_agent.helper_policy import HELPER, KFUNC, KSYM, UNKNOWN, Call
from node_agent.kernel.helper_calls import calls
from node_agent.kernel.helper_names import UAPI_HELPERS, helper_name
from node_agent.kernel.kallsyms import KernelSymbols

# The implementations this kernel's verifier picks, as `bpftool prog dump xlated` names them.
SEEN_ON_6_18 = {
    "bpf_get_current_pid_tgid": "get_current_pid_tgid",
    "bpf_user_rnd_u32": "get_prandom_u32",
    "bpf_get_raw_cpu_id": "get_smp_processor_id",
    "__htab_map_lookup_elem": "map_lookup_elem",
    "htab_map_update_elem": "map_update_elem",
    "htab_map_delete_elem": "map_delete_elem",
    "htab_lru_map_update_elem": "map_update_elem",
    "htab_percpu_map_update_elem": "map_update_elem",
    "array_map_update_elem": "map_update_elem",
    "trie_lookup_elem": "map_lookup_elem",
    "queue_stack_map_push_elem": "map_push_elem",
    "queue_map_pop_elem": "map_pop_elem",
    "stack_map_peek_elem": "map_peek_elem",
    "percpu_array_map_lookup_percpu_elem": "map_lookup_percpu_elem",
    "dev_map_redirect": "redirect_map",
    "__xsk_map_redirect": "redirect_map",
    "bpf_probe_read_kernel": "probe_read_kernel",
    "bpf_probe_read_compat": "probe_read",
    "bpf_probe_read_compat_str": "probe_read_str",
    "bpf_perf_event_output": "perf_event_output",
    "bpf_perf_event_output_tp": "perf_event_output",
    "bpf_perf_event_output_raw_tp": "perf_event_output",
    "bpf_skb_event_output": "perf_event_output",
    "bpf_xdp_event_output": "perf_event_output",
    "bpf_event_output_data": "perf_event_output",
    "bpf_get_stackid_tp": "get_stackid",
    "bpf_get_stack_raw_tp": "get_stack",
    "bpf_get_attach_cookie_trace": "get_attach_cookie",
    "bpf_get_func_ip_kprobe": "get_func_ip",
    "bpf_get_cgroup_classid_curr": "get_cgroup_classid",
    "bpf_get_socket_cookie_sock_addr": "get_socket_cookie",
    "bpf_get_netns_cookie_sock": "get_netns_cookie",
    "bpf_sock_addr_setsockopt": "setsockopt",
    "bpf_tc_sk_lookup_tcp": "sk_lookup_tcp",
    "bpf_xdp_skc_lookup_tcp": "skc_lookup_tcp",
    "bpf_xdp_redirect": "redirect",
    "bpf_xdp_redirect_map": "redirect_map",
    "bpf_sk_storage_get_tracing": "sk_storage_get",
    "bpf_xdp_adjust_head": "xdp_adjust_head",
    "bpf_send_signal.isra.0": "send_signal",
}


@pytest.mark.parametrize(("symbol", "helper"), sorted(SEEN_ON_6_18.items()))
def test_implementations_map_to_their_uapi_helper(symbol: str, helper: str) -> None:
    assert helper_name(symbol) == helper


@pytest.mark.parametrize(
    "symbol",
    [
        "bpf_preempt_disable",  # a kfunc
        "htab_map_lookup_and_delete_elem",  # the bpf(2) command's map operation
        "bpf_map_fd_sys_lookup_elem",
        "bpf_fd_array_map_update_elem",
        "commit_creds",
        "bpf_xdp_nonexistent",
        "__pfx___htab_map_lookup_elem",  # the padding in front of a function
        "__cfi_bpf_send_signal",
    ],
)
def test_other_functions_are_no_helper(symbol: str) -> None:
    assert helper_name(symbol) is None


def test_the_uapi_list_is_indexed_by_helper_id() -> None:
    assert UAPI_HELPERS[1] == "map_lookup_elem"
    assert UAPI_HELPERS[12] == "tail_call"
    assert UAPI_HELPERS[109] == "send_signal"
    assert UAPI_HELPERS[113] == "probe_read_kernel"


BASE = 0xFFFFFFFF814CC810
FAKE_KALLSYMS = f"""\
ffffffff81000000 T _stext
{BASE:016x} T __bpf_call_base
{BASE + 0x100:016x} T bpf_get_current_pid_tgid
{BASE + 0x200:016x} t __htab_map_lookup_elem
{BASE + 0x200 - 16:016x} t __pfx___htab_map_lookup_elem
{BASE - 0x300:016x} T bpf_send_signal
{BASE + 0x400:016x} T bpf_preempt_disable
{BASE + 0x500:016x} t commit_creds
{BASE + 0x600:016x} D bpf_user_rnd_u32
{BASE + 0x700:016x} t bpf_ktime_get_ns.isra.0
{BASE + 0x900:016x} t htab_map_update_elem\t[fake_module]
"""
# A module loaded after the first read, with a helper implementation in it.
LATER = f"{BASE + 0x800:016x} t bpf_sk_lookup_tcp\t[late_module]\n"


@pytest.fixture
def symbols(tmp_path: Path) -> KernelSymbols:
    source = tmp_path / "kallsyms"
    source.write_text(FAKE_KALLSYMS + LATER)
    return KernelSymbols.parse(FAKE_KALLSYMS, source)


def test_kallsyms_keeps_only_helper_implementations_relative_to_the_call_base(symbols: KernelSymbols) -> None:
    assert symbols.call_base == BASE
    assert symbols.helpers == {
        BASE + 0x100: ("bpf_get_current_pid_tgid", "get_current_pid_tgid"),
        BASE + 0x200: ("__htab_map_lookup_elem", "map_lookup_elem"),
        BASE - 0x300: ("bpf_send_signal", "send_signal"),
        BASE + 0x700: ("bpf_ktime_get_ns.isra.0", "ktime_get_ns"),
        BASE + 0x900: ("htab_map_update_elem", "map_update_elem"),
    }
    assert symbols.helper_at(-0x300) == ("bpf_send_signal", "send_signal")
    assert symbols.helper_at(0x500) is None


def test_other_functions_are_found_by_a_fresh_read(symbols: KernelSymbols) -> None:
    assert symbols.symbol_at(0x400) == "bpf_preempt_disable"
    assert symbols.symbol_at(0x500) == "commit_creds"
    assert symbols.symbol_at(0x600) is None  # data, not a function
    assert symbols.symbol_at(0x123) is None
    symbols.source.write_text("")  # answers are kept
    assert symbols.symbol_at(0x500) == "commit_creds"


def test_kallsyms_without_addresses_is_an_error() -> None:
    hidden = "0000000000000000 T __bpf_call_base\n0000000000000000 T bpf_send_signal\n"
    with pytest.raises(KernelError, match="kptr_restrict"):
        KernelSymbols.parse(hidden)


def insn(code: int, src: int = 0, imm: int = 0, dst: int = 0, off: int = 0) -> bytes:
    return struct.pack("=BBhi", code, (src << 4) | dst, off, imm)


EXIT = insn(0x95)


def test_calls_are_read_from_translated_instructions(symbols: KernelSymbols) -> None:
    program = b"".join(
        [
            insn(0x85, imm=0x100),  # helper
            insn(0x85, imm=-0x300),  # helper below the call base
            insn(0x85, src=1, imm=1, off=3),  # own subprogram: not reported
            insn(0x85, imm=12),  # tail call
            insn(0x85, src=2, imm=0x400),  # kfunc
            insn(0x85, src=2, imm=0x404),  # a kfunc without a symbol
            insn(0x85, imm=0x500),  # a kernel function that is no helper
            insn(0x85, imm=0x777),  # nothing known at all
            insn(0x85, imm=0x800),  # a helper the first read did not keep (module loaded later)
            insn(0xB7),
            EXIT,
        ]
    )
    assert calls(program, symbols) == [
        Call(HELPER, "get_current_pid_tgid"),
        Call(HELPER, "send_signal"),
        Call(HELPER, "tail_call"),
        Call(KFUNC, "bpf_preempt_disable"),
        Call(KFUNC, "at __bpf_call_base+0x404"),
        Call(UNKNOWN, "commit_creds"),
        Call(UNKNOWN, "the kernel function at __bpf_call_base+0x777"),
        Call(HELPER, "sk_lookup_tcp"),
    ]


def test_a_64_bit_load_is_two_slots(symbols: KernelSymbols) -> None:
    # The second slot of a 64-bit immediate is data; here it is made to look like a call.
    program = insn(0x18, dst=1, imm=0x1234) + insn(0x85, imm=0x100) + insn(0x85, imm=-0x300) + EXIT
    assert calls(program, symbols) == [Call(HELPER, "send_signal")]


def test_call_forms_the_kernel_does_not_produce_are_unknown(symbols: KernelSymbols) -> None:
    program = insn(0x85, src=3, imm=0x100) + insn(0x8D, imm=0x100) + insn(0x86, imm=0x100) + EXIT
    assert [call.kind for call in calls(program, symbols)] == [UNKNOWN, UNKNOWN, UNKNOWN]


def test_jumps_and_exits_are_no_calls(symbols: KernelSymbols) -> None:
    program = insn(0x05, off=0) + insn(0x15, dst=0, imm=0x100) + insn(0x16, imm=0x100) + EXIT
    assert calls(program, symbols) == []


def ld_imm64(value: int, src: int = 0) -> bytes:
    low, high = value & 0xFFFFFFFF, value >> 32
    as_s32 = [x - (1 << 32) if x >= 1 << 31 else x for x in (low, high)]
    return insn(0x18, src=src, dst=1, imm=as_s32[0]) + insn(0, imm=as_s32[1])


def test_a_kernel_variables_address_loaded_by_the_program_is_a_ksym(symbols: KernelSymbols) -> None:
    # A `__ksym` extern, as the verifier leaves it: a 64-bit load of the variable's very address.
    program = ld_imm64(BASE + 0x600) + EXIT
    assert calls(program, symbols) == [Call(KSYM, "bpf_user_rnd_u32")]
    assert str(Call(KSYM, "bpf_user_rnd_u32")) == "the kernel symbol bpf_user_rnd_u32"


def test_maps_and_plain_constants_are_no_ksym(symbols: KernelSymbols) -> None:
    program = (
        ld_imm64(BASE + 0x600, src=1)  # a map, by id (the dump's pseudo src_reg): the program's own
        + ld_imm64(BASE + 0x600 + 8)  # no symbol starts there
        + ld_imm64(0xFFFFFFFF00000000)  # a mask
        + EXIT
    )
    assert calls(program, symbols) == []


def test_tenants_may_not_reach_a_kernel_variable() -> None:
    from node_agent import helper_policy
    from node_agent.kernel.attach_types import PROG_TYPE_CGROUP_SKB

    ksym = Call(KSYM, "init_task")
    assert helper_policy.disallowed([ksym], PROG_TYPE_CGROUP_SKB, cluster=False) == [ksym]
    assert helper_policy.disallowed([ksym], PROG_TYPE_CGROUP_SKB, cluster=True) == []
