// SPDX-License-Identifier: GPL-2.0
/* Test objects of the bytecode loader (tests/kernel/test_bytecode_*.py). */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>

#ifdef V2
const volatile __u32 STEP = 2; /* another object, the same maps */
#else
const volatile __u32 STEP = 1; /* a parameter: what each packet adds */
#endif
const volatile char LABEL[16] = "none"; /* a string parameter, counted by its first byte */

struct counts {
    __u64 packets;
#ifdef CHANGED
    __u32 label; /* another layout of the same size: the map must start empty */
    __u32 flags;
#else
    __u64 label;
#endif
};

struct {
    __uint(type, BPF_MAP_TYPE_ARRAY);
    __uint(max_entries, 1);
    __type(key, __u32);
    __type(value, struct counts);
} packets SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_HASH);
    __uint(max_entries, 16);
    __type(key, __u32);
    __type(value, __u64);
} unused_other SEC(".maps");

SEC("cgroup_skb/egress")
int count_egress(struct __sk_buff *skb)
{
    __u32 key = 0;
    struct counts *c = bpf_map_lookup_elem(&packets, &key);

    if (c) {
        __sync_fetch_and_add(&c->packets, STEP);
        c->label = LABEL[0];
    }
    return 1;
}

/* A task_struct as an older kernel laid it out: CO-RE moves tgid to where this kernel has it. */
struct task_struct___old {
    int pad;
    pid_t tgid;
} __attribute__((preserve_access_index));

SEC("cgroup_skb/egress")
int core_offset(struct __sk_buff *skb)
{
    __u32 key = 0;
    struct counts *c = bpf_map_lookup_elem(&packets, &key);

    if (c)
        c->label = bpf_core_field_offset(struct task_struct___old, tgid);
    return 1;
}

/* Never loaded: another program of the object, whose section would make it a kprobe. */
SEC("kprobe/do_sys_open")
int other_program(void *ctx)
{
    __u32 key = 1;
    __u64 one = 1;

    bpf_map_update_elem(&unused_other, &key, &one, BPF_ANY);
    return 0;
}

/* Refused by the verifier: reads a map value without checking the lookup. */
SEC("cgroup_skb/egress")
int unchecked(struct __sk_buff *skb)
{
    __u32 key = 0;
    __u64 *c = bpf_map_lookup_elem(&unused_other, &key);

    *c += 1;
    return 1;
}

/* Refused at its very end, after a verifier log far longer than any buffer keeps whole. */
SEC("cgroup_skb/egress")
int unchecked_at_the_end(struct __sk_buff *skb)
{
    __u32 key = 0;
    __u64 *c;

#pragma unroll
    for (int i = 0; i < 3000; i++) {
        c = bpf_map_lookup_elem(&unused_other, &key);
        if (c)
            *c += skb->len;
        key += skb->len & 1;
    }
    c = bpf_map_lookup_elem(&unused_other, &key);
    *c += 1;
    return 1;
}

char LICENSE[] SEC("license") = "GPL";
