"""Which kernel functions a loaded program may call, by program kind and program type. Pure: no I/O.

An EbpfProgram belongs to a tenant, who is an attacker: it may call the helpers that keep it inside
its own pods' data (maps it owns, time, randomness, its packets, sockets and sysctls, its current task
and that task's user memory) and nothing that reads or writes the kernel, signals processes, or
reaches node-wide state. The verifier of a privileged loader offers far more (bpf_send_signal,
bpf_probe_read_kernel and bpf_trace_printk to every program type, for one), so this is an allowlist:
what is not listed is refused, kfuncs and unknown functions included. A ClusterEbpfProgram is an
admin's and may call anything; the denylist is there to narrow that later without a new structure.

Helpers are named as in the UAPI (enum bpf_func_id without BPF_FUNC_): "send_signal" is
bpf_send_signal.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from node_agent.kernel import attach_types as at

HELPER = "helper"
KFUNC = "kfunc"
KSYM = "ksym"  # the address of a kernel variable, loaded into a register (a `__ksym` extern)
UNKNOWN = "unknown"  # a call to a kernel function that implements no known helper


@dataclass(frozen=True, order=True)
class Call:
    """A call of a loaded program to something outside it."""

    kind: str  # HELPER, KFUNC, KSYM or UNKNOWN
    name: str  # the helper's UAPI name; a kfunc's or unknown function's symbol (or its address)

    def __str__(self) -> str:
        if self.kind == HELPER:
            return f"bpf_{self.name}"
        if self.kind == KFUNC:
            return f"the kfunc {self.name}"
        if self.kind == KSYM:
            return f"the kernel symbol {self.name}"
        return f"{self.name} (a kernel function that is no known helper)"


# Every namespaced program: its own maps, time, randomness, CPU, tail calls within its own programs,
# locks and loops, and output through its own ring buffers and perf event arrays.
_BASE = frozenset(
    {
        "map_lookup_elem",
        "map_update_elem",
        "map_delete_elem",
        "map_push_elem",
        "map_pop_elem",
        "map_peek_elem",
        "map_lookup_percpu_elem",
        "for_each_map_elem",
        "ktime_get_ns",
        "ktime_get_boot_ns",
        "ktime_get_coarse_ns",
        "ktime_get_tai_ns",
        "jiffies64",
        "get_prandom_u32",
        "get_smp_processor_id",
        "get_numa_node_id",
        "tail_call",
        "spin_lock",
        "spin_unlock",
        "loop",
        "strtol",
        "strtoul",
        "strncmp",
        "perf_event_output",
        "ringbuf_output",
        "ringbuf_reserve",
        "ringbuf_submit",
        "ringbuf_discard",
        "ringbuf_query",
        "ringbuf_reserve_dynptr",
        "ringbuf_submit_dynptr",
        "ringbuf_discard_dynptr",
        "dynptr_from_mem",
        "dynptr_read",
        "dynptr_write",
        "dynptr_data",
    }
)
# Program types that run in the context of the pod's own task: the current task is the pod's, so
# naming it tells the tenant nothing new. Packet programs (CgroupSkb, Tc, Xdp) run in softirq on
# whatever task the CPU was running, another tenant's or the host's, and do not get these.
_CURRENT_TASK = frozenset(
    {
        "get_current_pid_tgid",
        "get_current_uid_gid",
        "get_current_comm",
        "get_current_cgroup_id",
        "get_current_ancestor_cgroup_id",
        "get_ns_current_pid_tgid",
        "get_cgroup_classid",
    }
)
# Tracepoint and kprobe-type (Uprobe) programs are filtered to the selected pods' tasks, so reading
# the current task's user memory reads the pod's own memory. Kernel memory, kernel addresses (task
# pointers, stacks, function addresses), signals, writes to user memory and the node-wide trace pipe
# are not listed, hence refused.
_TRACING = frozenset({"probe_read_user", "probe_read_user_str", "get_attach_cookie"})
_SOCKET = frozenset({"get_socket_cookie", "get_netns_cookie", "sk_storage_get", "sk_storage_delete"})
_CGROUP_SKB = frozenset(
    {
        "skb_load_bytes",
        "skb_load_bytes_relative",
        "skb_cgroup_id",
        "skb_ancestor_cgroup_id",
        "sk_cgroup_id",
        "sk_ancestor_cgroup_id",
        "get_socket_uid",
        "sk_fullsock",
        "tcp_sock",
        "get_listener_sock",
        "skb_ecn_set_ce",
    }
)
# Tc on the pod's own interface: read and rewrite its packets. Redirects (to other interfaces or
# namespaces) are for a ClusterEbpfProgram.
_SCHED_CLS = frozenset(
    {
        "skb_load_bytes",
        "skb_load_bytes_relative",
        "skb_store_bytes",
        "l3_csum_replace",
        "l4_csum_replace",
        "csum_diff",
        "csum_update",
        "csum_level",
        "skb_pull_data",
        "skb_change_proto",
        "skb_change_type",
        "skb_change_tail",
        "skb_change_head",
        "skb_adjust_room",
        "skb_vlan_push",
        "skb_vlan_pop",
        "get_hash_recalc",
        "set_hash",
        "set_hash_invalid",
        "skb_ecn_set_ce",
        "get_socket_cookie",
        "get_socket_uid",
        "get_netns_cookie",
        "sk_fullsock",
    }
)
_XDP = frozenset(
    {
        "xdp_adjust_head",
        "xdp_adjust_tail",
        "xdp_adjust_meta",
        "xdp_load_bytes",
        "xdp_store_bytes",
        "xdp_get_buff_len",
        "csum_diff",
    }
)
_SYSCTL = frozenset(
    {"sysctl_get_name", "sysctl_get_current_value", "sysctl_get_new_value", "sysctl_set_new_value"}
)
# The socket calls act on the pod's own socket (options, binding its own address).
_SOCK_ADDR = _SOCKET | {"getsockopt", "setsockopt", "bind"}

_NAMESPACED: dict[int, frozenset[str]] = {
    at.PROG_TYPE_TRACEPOINT: _BASE | _CURRENT_TASK | _TRACING,
    at.PROG_TYPE_KPROBE: _BASE | _CURRENT_TASK | _TRACING,
    at.PROG_TYPE_CGROUP_SKB: _BASE | _CGROUP_SKB | _SOCKET,
    at.PROG_TYPE_SCHED_CLS: _BASE | _SCHED_CLS,
    at.PROG_TYPE_XDP: _BASE | _XDP,
    at.PROG_TYPE_CGROUP_SOCK_ADDR: _BASE | _CURRENT_TASK | _SOCK_ADDR,
    at.PROG_TYPE_CGROUP_SOCK: _BASE | _CURRENT_TASK | _SOCKET,
    at.PROG_TYPE_CGROUP_SYSCTL: _BASE | _CURRENT_TASK | _SYSCTL,
    at.PROG_TYPE_CGROUP_DEVICE: _BASE | _CURRENT_TASK,
}
# What even a ClusterEbpfProgram may not call: nothing, for now (admins are trusted).
_CLUSTER_DENIED: frozenset[str] = frozenset()

# The API's names for the program types, for messages. An EbpfProgram runs the kprobe program type
# only as a Uprobe (Kprobe is for a ClusterEbpfProgram).
_TYPE_NAMES = {
    at.PROG_TYPE_TRACEPOINT: "Tracepoint",
    at.PROG_TYPE_KPROBE: "Uprobe",
    at.PROG_TYPE_CGROUP_SKB: "CgroupSkb",
    at.PROG_TYPE_SCHED_CLS: "Tc",
    at.PROG_TYPE_XDP: "Xdp",
    at.PROG_TYPE_CGROUP_SOCK_ADDR: "CgroupSockAddr",
    at.PROG_TYPE_CGROUP_SOCK: "CgroupSock",
    at.PROG_TYPE_CGROUP_SYSCTL: "CgroupSysctl",
    at.PROG_TYPE_CGROUP_DEVICE: "CgroupDevice",
}
_MAX_NAMED = 8  # calls named in one message; status messages stay short


def allowed_helpers(prog_type: int) -> frozenset[str]:
    """The helpers an EbpfProgram of the program type may call (none for a type it cannot have)."""
    return _NAMESPACED.get(prog_type, frozenset())


def checks_anything(cluster: bool) -> bool:
    """Whether a program of the kind can be refused at all; if not, its calls need not be read."""
    return not cluster or bool(_CLUSTER_DENIED)


def _allowed(call: Call, prog_type: int, cluster: bool) -> bool:
    if cluster:
        return not (call.kind == HELPER and call.name in _CLUSTER_DENIED)
    return call.kind == HELPER and call.name in allowed_helpers(prog_type)


def disallowed(calls: Iterable[Call], prog_type: int, cluster: bool) -> list[Call]:
    """The distinct calls the program may not make, in a stable order."""
    return sorted({call for call in calls if not _allowed(call, prog_type, cluster)})


def type_name(prog_type: int) -> str:
    return _TYPE_NAMES.get(prog_type, f"program type {prog_type}")


def refusal(calls: list[Call], prog_type: int, cluster: bool) -> str:
    """What the user reads: the calls, the kind and program type, and who could make them."""
    named = [str(call) for call in calls[:_MAX_NAMED]]
    if len(calls) > _MAX_NAMED:
        named.append(f"{len(calls) - _MAX_NAMED} more")
    listed = named[0] if len(named) == 1 else ", ".join(named[:-1]) + " and " + named[-1]
    which = "which" if len(calls) == 1 else "each of which"
    if cluster:
        return f"the program calls {listed}, {which} a ClusterEbpfProgram may not use"
    return (
        f"the program calls {listed}, {which} an EbpfProgram of type {type_name(prog_type)} may not use"
        " (a ClusterEbpfProgram can)"
    )
