// SPDX-License-Identifier: GPL-2.0
/* Objects the loader refuses before any program is loaded. */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>

#ifdef PINNED
/* libbpf would open (or create) /sys/fs/bpf/shared_counts: another program's map. */
struct {
    __uint(type, BPF_MAP_TYPE_HASH);
    __uint(max_entries, 16);
    __uint(pinning, LIBBPF_PIN_BY_NAME);
    __type(key, __u32);
    __type(value, __u64);
} shared_counts SEC(".maps");
#define COUNTS shared_counts
#endif

#ifdef KSYM
/* A kernel variable, read through its address. */
extern const int bpf_prog_active __ksym;
#endif

#ifdef KFUNC
/* A kernel function called directly. */
extern void bpf_rcu_read_lock(void) __ksym;
extern void bpf_rcu_read_unlock(void) __ksym;
#endif

#ifdef HUGE
/* 4 Mi entries of 64 bytes: far over a small cap. */
struct {
    __uint(type, BPF_MAP_TYPE_ARRAY);
    __uint(max_entries, 1 << 16);
    __type(key, __u32);
    __type(value, char[64]);
} huge SEC(".maps");
#endif

#ifdef OWN_NAME
/* The agent's own map name: a tenant may not take it. */
struct {
    __uint(type, BPF_MAP_TYPE_HASH);
    __uint(max_entries, 16);
    __type(key, __u64);
    __type(value, __u64);
} bpfleet_pods SEC(".maps");
#endif

SEC("cgroup_skb/egress")
int refused(struct __sk_buff *skb)
{
    __u32 key = 0;
#ifdef PINNED
    bpf_map_lookup_elem(&COUNTS, &key);
#endif
#ifdef KSYM
    return bpf_prog_active ? 0 : 1;
#endif
#ifdef KFUNC
    bpf_rcu_read_lock();
    bpf_rcu_read_unlock();
#endif
#ifdef HUGE
    bpf_map_lookup_elem(&huge, &key);
#endif
#ifdef OWN_NAME
    __u64 pod = 0;
    bpf_map_lookup_elem(&bpfleet_pods, &pod);
#endif
    return 1;
}

char LICENSE[] SEC("license") = "GPL";
