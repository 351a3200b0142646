"""The helper allowlist as pure policy: what each kind may call in each program type, and what the
user reads when a call is refused."""

from __future__ import annotations

import pytest

from node_agent import helper_policy as policy
from node_agent.helper_policy import HELPER, KFUNC, UNKNOWN, Call
from node_agent.kernel import attach_types as at
from node_agent.kernel.helper_names import UAPI_HELPERS

TRACING = (at.PROG_TYPE_TRACEPOINT, at.PROG_TYPE_KPROBE)
ALL_TYPES = (
    at.PROG_TYPE_TRACEPOINT,
    at.PROG_TYPE_KPROBE,
    at.PROG_TYPE_CGROUP_SKB,
    at.PROG_TYPE_SCHED_CLS,
    at.PROG_TYPE_XDP,
    at.PROG_TYPE_CGROUP_SOCK_ADDR,
    at.PROG_TYPE_CGROUP_SOCK,
    at.PROG_TYPE_CGROUP_SYSCTL,
    at.PROG_TYPE_CGROUP_DEVICE,
)
PACKET_TYPES = (at.PROG_TYPE_CGROUP_SKB, at.PROG_TYPE_SCHED_CLS, at.PROG_TYPE_XDP)
# Each reads or writes the kernel or other tenants' state; the verifier offers most of them to every
# program type of a privileged loader.
POWERFUL = (
    "probe_read",
    "probe_read_str",
    "probe_read_kernel",
    "probe_read_kernel_str",
    "probe_write_user",
    "send_signal",
    "send_signal_thread",
    "override_return",
    "d_path",
    "sys_bpf",
    "get_current_task",
    "get_current_task_btf",
    "get_stack",
    "get_stackid",
    "get_task_stack",
    "get_func_ip",
    "trace_printk",
    "trace_vprintk",
    "snprintf",
    "snprintf_btf",
    "seq_printf",
    "copy_from_user_task",
    "find_vma",
    "task_pt_regs",
    "per_cpu_ptr",
    "this_cpu_ptr",
    "kptr_xchg",
    "redirect",
    "redirect_peer",
    "redirect_neigh",
    "clone_redirect",
)


def helper(name: str) -> Call:
    return Call(HELPER, name)


def test_every_name_in_the_allowlists_is_a_real_helper() -> None:
    # A misspelt name would never match a call and silently refuse what it meant to allow.
    for prog_type in ALL_TYPES:
        assert policy.allowed_helpers(prog_type) <= set(UAPI_HELPERS[1:]), prog_type


@pytest.mark.parametrize("prog_type", ALL_TYPES)
@pytest.mark.parametrize("name", POWERFUL)
def test_namespaced_programs_may_not_use_powerful_helpers(prog_type: int, name: str) -> None:
    assert policy.disallowed([helper(name)], prog_type, cluster=False) == [helper(name)]


@pytest.mark.parametrize("prog_type", ALL_TYPES)
def test_every_namespaced_type_gets_the_base_set(prog_type: int) -> None:
    base = ["map_lookup_elem", "map_update_elem", "map_delete_elem", "ktime_get_ns", "get_prandom_u32"]
    base += ["get_smp_processor_id", "tail_call", "ringbuf_output", "perf_event_output", "spin_lock"]
    assert policy.disallowed([helper(n) for n in base], prog_type, cluster=False) == []


@pytest.mark.parametrize("prog_type", TRACING)
def test_tracing_may_read_the_current_tasks_user_memory(prog_type: int) -> None:
    allowed = ["probe_read_user", "probe_read_user_str", "get_current_pid_tgid", "get_current_comm"]
    allowed += ["get_current_uid_gid", "get_current_cgroup_id", "get_current_ancestor_cgroup_id"]
    assert policy.disallowed([helper(n) for n in allowed], prog_type, cluster=False) == []


@pytest.mark.parametrize("prog_type", PACKET_TYPES)
def test_packet_programs_may_not_name_the_task_they_interrupted(prog_type: int) -> None:
    # They run in softirq on whatever task the CPU ran: another tenant's or the host's.
    names = ["get_current_pid_tgid", "get_current_comm", "get_current_cgroup_id", "probe_read_user"]
    refused = policy.disallowed([helper(n) for n in names], prog_type, cluster=False)
    assert refused == sorted(map(helper, names))


@pytest.mark.parametrize(
    ("prog_type", "name"),
    [
        (at.PROG_TYPE_CGROUP_SKB, "skb_load_bytes"),
        (at.PROG_TYPE_CGROUP_SKB, "skb_ancestor_cgroup_id"),
        (at.PROG_TYPE_SCHED_CLS, "skb_store_bytes"),
        (at.PROG_TYPE_SCHED_CLS, "l4_csum_replace"),
        (at.PROG_TYPE_XDP, "xdp_adjust_head"),
        (at.PROG_TYPE_XDP, "xdp_load_bytes"),
        (at.PROG_TYPE_CGROUP_SOCK_ADDR, "setsockopt"),
        (at.PROG_TYPE_CGROUP_SOCK, "get_socket_cookie"),
        (at.PROG_TYPE_CGROUP_SYSCTL, "sysctl_get_name"),
        (at.PROG_TYPE_CGROUP_SYSCTL, "sysctl_set_new_value"),
        (at.PROG_TYPE_CGROUP_DEVICE, "get_current_uid_gid"),
    ],
)
def test_each_type_gets_its_own_helpers(prog_type: int, name: str) -> None:
    assert policy.disallowed([helper(name)], prog_type, cluster=False) == []


@pytest.mark.parametrize(
    ("prog_type", "name"),
    [
        (at.PROG_TYPE_TRACEPOINT, "skb_load_bytes"),
        (at.PROG_TYPE_XDP, "sysctl_set_new_value"),
        (at.PROG_TYPE_CGROUP_SKB, "xdp_adjust_head"),
        (at.PROG_TYPE_CGROUP_DEVICE, "setsockopt"),
    ],
)
def test_a_types_helpers_are_not_given_to_other_types(prog_type: int, name: str) -> None:
    assert policy.disallowed([helper(name)], prog_type, cluster=False) == [helper(name)]


@pytest.mark.parametrize("prog_type", ALL_TYPES)
def test_kfuncs_and_unknown_functions_are_refused_to_namespaced_programs(prog_type: int) -> None:
    calls = [Call(KFUNC, "bpf_preempt_disable"), Call(UNKNOWN, "some_kernel_function")]
    assert policy.disallowed(calls, prog_type, cluster=False) == calls


def test_a_type_an_ebpfprogram_cannot_have_allows_nothing() -> None:
    assert policy.allowed_helpers(26) == frozenset()  # BPF_PROG_TYPE_TRACING
    assert policy.disallowed([helper("map_lookup_elem")], 26, cluster=False) == [helper("map_lookup_elem")]


@pytest.mark.parametrize("prog_type", ALL_TYPES)
def test_cluster_programs_may_call_anything(prog_type: int) -> None:
    calls = [helper(name) for name in UAPI_HELPERS[1:]]
    calls += [Call(KFUNC, "bpf_preempt_disable"), Call(UNKNOWN, "x")]
    assert policy.disallowed(calls, prog_type, cluster=True) == []


def test_only_namespaced_programs_need_their_calls_read() -> None:
    assert policy.checks_anything(cluster=False)
    assert not policy.checks_anything(cluster=True)


def test_each_refused_call_is_named_once_in_a_stable_order() -> None:
    calls = [helper("trace_printk"), helper("send_signal"), helper("trace_printk"), helper("map_lookup_elem")]
    refused = policy.disallowed(calls, at.PROG_TYPE_TRACEPOINT, cluster=False)
    assert refused == [helper("send_signal"), helper("trace_printk")]


def test_the_message_names_the_helper_the_type_and_who_may_use_it() -> None:
    message = policy.refusal([helper("send_signal")], at.PROG_TYPE_TRACEPOINT, cluster=False)
    assert message == (
        "the program calls bpf_send_signal, which an EbpfProgram of type Tracepoint may not use"
        " (a ClusterEbpfProgram can)"
    )


def test_the_message_names_several_calls_and_kfuncs() -> None:
    calls = [helper("probe_read_kernel"), Call(KFUNC, "bpf_rcu_read_lock"), Call(UNKNOWN, "foo")]
    message = policy.refusal(calls, at.PROG_TYPE_XDP, cluster=False)
    assert message == (
        "the program calls bpf_probe_read_kernel, the kfunc bpf_rcu_read_lock and foo (a kernel function"
        " that is no known helper), each of which an EbpfProgram of type Xdp may not use"
        " (a ClusterEbpfProgram can)"
    )


def test_the_message_stays_short_with_many_calls() -> None:
    calls = [helper(name) for name in POWERFUL]
    message = policy.refusal(calls, at.PROG_TYPE_KPROBE, cluster=False)
    assert f"and {len(POWERFUL) - 8} more, each of which an EbpfProgram of type Uprobe" in message
    assert len(message) < 400
