/* pod-traffic-counter — packets and bytes per pod, in one direction.
 *
 * Attach: CgroupSkb (Ingress or Egress). Function: count_packets.
 * Map `traffic` (hash, key: pod cgroup v2 id u64, value: struct traffic_counts) is pinned by the
 * agent under /sys/fs/bpf/bpfleet/<namespace>/<program>/<version>/maps/traffic.
 * Every packet is let through: this program observes, it never filters.
 */
#include <bpfleet.h>

struct traffic_counts {
    __u64 packets;
    __u64 bytes;
};

BPF_HASH(traffic, __u64, struct traffic_counts, 10240);

int count_packets(struct __sk_buff *skb)
{
    __u64 pod = bpfleet_skb_pod_cgroup_id(skb);
    struct traffic_counts zero = {};
    struct traffic_counts *counts = traffic.lookup_or_try_init(&pod, &zero);

    if (counts) {
        __sync_fetch_and_add(&counts->packets, 1);
        __sync_fetch_and_add(&counts->bytes, skb->len);
    }
    return 1; /* 1 = allow */
}
