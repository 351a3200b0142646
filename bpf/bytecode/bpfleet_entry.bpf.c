// SPDX-License-Identifier: GPL-2.0
/* The enforced pod filter of bytecode programs for pods (Tracepoint, Uprobe): the same filter as the
 * BCC prelude (bpf/include/node_wide_prelude.h), prebuilt by the agent's own build.
 *
 * The agent loads bpfleet_entry with the program type of the user's program and attaches it; it
 * tail-calls the user's program (slot 0 of bpfleet_progs) only for tasks of the selected pods, whose
 * cgroup ids the agent keeps in bpfleet_pods (node_agent/kernel/pod_filter.py writes it, same key and
 * value as the prelude's). bpfleet_pods is read-only for programs (BPF_F_RDONLY_PROG): no program
 * can select a pod. The user's program is reachable through nothing else. */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>

/* Deepest cgroup nesting looked through, as in bpf/include/bpfleet.h. */
#define BPFLEET_MAX_CGROUP_LEVEL 16

struct bpfleet_pod {
    char uid[48]; /* the pod's UID: how the agent finds its entry again after a restart */
    __u64 dev;    /* uprobes: the binary file probed for the pod (st_dev, st_ino); 0 otherwise */
    __u64 ino;
};

struct {
    __uint(type, BPF_MAP_TYPE_HASH);
    __uint(max_entries, 4096);
    __uint(map_flags, BPF_F_RDONLY_PROG);
    __type(key, __u64);
    __type(value, struct bpfleet_pod);
} bpfleet_pods SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_PROG_ARRAY);
    __uint(max_entries, 1);
    __type(key, __u32);
    __type(value, __u32);
} bpfleet_progs SEC(".maps");

/* The pod of the current task: the parent of its own (container) cgroup; 0 at the root. */
static __always_inline __u64 bpfleet_current_pod_cgroup_id(void)
{
    __u64 own = bpf_get_current_cgroup_id();
    __u64 parent = 0;

#pragma unroll
    for (int level = 0; level < BPFLEET_MAX_CGROUP_LEVEL; level++) {
        __u64 id = bpf_get_current_ancestor_cgroup_id(level);
        if (id == own)
            return parent;
        parent = id;
    }
    return 0;
}

/* The section is a placeholder: the agent sets the program type from the user's program. */
SEC("tracepoint")
int bpfleet_entry(void *ctx)
{
    __u64 pod = bpfleet_current_pod_cgroup_id();

    if (pod != 0 && bpf_map_lookup_elem(&bpfleet_pods, &pod))
        bpf_tail_call(ctx, &bpfleet_progs, 0);
    return 0;
}

char LICENSE[] SEC("license") = "GPL";
