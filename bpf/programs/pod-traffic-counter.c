/* pod-traffic-counter — packets and bytes per pod, in one direction.
 *
 * Attach: CgroupSkb (Ingress or Egress). Function: count_packets.
 * Map `traffic` (hash, key: pod cgroup v2 id u64, value: struct traffic_counts) is pinned by the
 * agent under /sys/fs/bpf/bpfleet/<namespace>/<program>/<version>/maps/traffic.
 * Every packet is let through: this program observes, it never filters.
 * Builds with BCC and as CO-RE bytecode (bpfleet_portable.h).
 */
#include <bpfleet_portable.h>

struct traffic_counts {
    __u64 packets;
    __u64 bytes;
};

BPFLEET_HASH(traffic, __u64, struct traffic_counts, 10240);

static __always_inline struct traffic_counts *counts_of(__u64 *pod)
{
    struct traffic_counts zero = {};
#ifdef BPFLEET_BYTECODE
    struct traffic_counts *counts = bpf_map_lookup_elem(&traffic, pod);

    if (counts)
        return counts;
    bpf_map_update_elem(&traffic, pod, &zero, BPF_NOEXIST);
    return bpf_map_lookup_elem(&traffic, pod);
#else
    return traffic.lookup_or_try_init(pod, &zero);
#endif
}

/* The section names a direction; the agent loads it for the direction attach.direction says. */
BPFLEET_PROGRAM("cgroup_skb/egress")
int count_packets(struct __sk_buff *skb)
{
    __u64 pod = bpfleet_skb_pod_cgroup_id(skb);
    struct traffic_counts *counts = counts_of(&pod);

    if (counts) {
        __sync_fetch_and_add(&counts->packets, 1);
        __sync_fetch_and_add(&counts->bytes, skb->len);
    }
    return 1; /* 1 = allow */
}
