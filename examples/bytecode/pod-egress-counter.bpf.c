/* pod-egress-counter.bpf.c — an EbpfProgram's own bytecode (docs/bytecode.md): egress packets per
 * pod, and a parameter that sets which packets count.
 *
 *   make bytecode-object SRC=examples/bytecode/pod-egress-counter.bpf.c
 *
 * Attach: CgroupSkb, direction Egress. Function: count_egress. Parameter MIN_LEN (integer): only
 * packets of at least that many bytes count. Map `egress` (hash, key: pod cgroup id u64, value: u64).
 */
#include <bpfleet.h> /* with BPFLEET_BYTECODE: vmlinux.h, libbpf's helpers, the pod cgroup id helpers */

struct {
    __uint(type, BPF_MAP_TYPE_HASH);
    __uint(max_entries, 10240);
    __type(key, __u64);
    __type(value, __u64);
} egress SEC(".maps");

/* spec.parameters.MIN_LEN: the agent writes it into .rodata before the verifier runs. */
const volatile __u32 MIN_LEN = 0;

SEC("cgroup_skb/egress")
int count_egress(struct __sk_buff *skb)
{
    __u64 pod = bpfleet_skb_pod_cgroup_id(skb);
    __u64 one = 1;
    __u64 *count;

    if (skb->len < MIN_LEN)
        return 1;
    count = bpf_map_lookup_elem(&egress, &pod);
    if (count)
        __sync_fetch_and_add(count, 1);
    else
        bpf_map_update_elem(&egress, &pod, &one, BPF_NOEXIST);
    return 1; /* 1 = let the packet through */
}

char LICENSE[] SEC("license") = "GPL";
