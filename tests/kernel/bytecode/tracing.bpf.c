// SPDX-License-Identifier: GPL-2.0
/* Tracepoint test objects: a per-pod exec counter (tenants, behind the agent's pod filter), and a
 * CO-RE read of the current task's tgid (cluster: tenants may not read the kernel). */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>

struct {
    __uint(type, BPF_MAP_TYPE_HASH);
    __uint(max_entries, 1024);
    __type(key, __u64);
    __type(value, __u64);
} execs SEC(".maps");

/* Counts every exec it sees by cgroup; it never asks whether the task is in a selected pod. */
SEC("tracepoint/sched/sched_process_exec")
int count_every_exec(void *ctx)
{
    __u64 cgroup = bpf_get_current_cgroup_id();
    __u64 one = 1, *count = bpf_map_lookup_elem(&execs, &cgroup);

    if (count)
        __sync_fetch_and_add(count, 1);
    else
        bpf_map_update_elem(&execs, &cgroup, &one, BPF_NOEXIST);
    return 0;
}

/* The tgid of each exec'ing task, read from task_struct at the offset this kernel's BTF gives. */
SEC("tracepoint/sched/sched_process_exec")
int record_tgid(void *ctx)
{
    struct task_struct *task = (struct task_struct *)bpf_get_current_task();
    __u64 tgid = BPF_CORE_READ(task, tgid);
    __u64 one = 1;

    bpf_map_update_elem(&execs, &tgid, &one, BPF_ANY);
    return 0;
}

struct {
    __uint(type, BPF_MAP_TYPE_HASH);
    __uint(max_entries, 1024);
    __type(key, __u64);
    __type(value, __u64);
} calls SEC(".maps");

/* Counts calls of the probed function by the caller's cgroup; never asks about pods either. */
SEC("uprobe")
int count_calls(void *ctx)
{
    __u64 cgroup = bpf_get_current_cgroup_id();
    __u64 one = 1, *count = bpf_map_lookup_elem(&calls, &cgroup);

    if (count)
        __sync_fetch_and_add(count, 1);
    else
        bpf_map_update_elem(&calls, &cgroup, &one, BPF_NOEXIST);
    return 0;
}

char LICENSE[] SEC("license") = "GPL";
