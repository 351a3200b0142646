/* dns-query-counter — DNS queries (UDP datagrams to port 53) sent by each pod, over IPv4.
 *
 * Attach: CgroupSkb, direction Egress. Function: count_dns_queries.
 * Map `queries` (hash, key: pod cgroup v2 id u64, value: u64 count).
 * Every packet is let through. DNS over TCP and over IPv6 are not counted.
 * Builds with BCC and as CO-RE bytecode (bpfleet_portable.h).
 */
#include <bpfleet_portable.h>
#include <bpfleet_net.h>

BPFLEET_HASH(queries, __u64, __u64, 10240);

static __always_inline void count_query(__u64 pod)
{
#ifdef BPFLEET_BYTECODE
    bpfleet_increment(&queries, &pod);
#else
    queries.increment(pod);
#endif
}

BPFLEET_PROGRAM("cgroup_skb/egress")
int count_dns_queries(struct __sk_buff *skb)
{
    struct iphdr ip;
    __u16 dest_port;

    if (skb->protocol != bpf_htons(ETH_P_IP))
        return 1;
    if (bpf_skb_load_bytes(skb, 0, &ip, sizeof(ip)) < 0 || ip.protocol != IPPROTO_UDP)
        return 1;
    /* cgroup_skb sees the packet from its IP header on; the UDP destination port follows the
     * source port right after the IP header. */
    if (bpf_skb_load_bytes(skb, ip.ihl * 4 + 2, &dest_port, sizeof(dest_port)) < 0)
        return 1;
    if (dest_port == bpf_htons(53))
        count_query(bpfleet_skb_pod_cgroup_id(skb));
    return 1;
}
