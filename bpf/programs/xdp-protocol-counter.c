/* xdp-protocol-counter — packets arriving on a pod's interface, by IP protocol number.
 *
 * Attach: Xdp (interface default eth0, inside the pod). Function: count_protocols.
 * Map `packets` (array of 256 u64, indexed by IPv4 protocol: 1 ICMP, 6 TCP, 17 UDP, ...).
 * Every packet passes. Builds with BCC and as CO-RE bytecode (bpfleet_portable.h).
 */
#include <bpfleet_portable.h>
#include <bpfleet_net.h>

BPFLEET_ARRAY(packets, __u64, 256);

static __always_inline void count_protocol(int protocol)
{
#ifdef BPFLEET_BYTECODE
    __u64 *count = bpf_map_lookup_elem(&packets, &protocol);
#else
    __u64 *count = packets.lookup(&protocol);
#endif
    if (count)
        __sync_fetch_and_add(count, 1);
}

BPFLEET_PROGRAM("xdp")
int count_protocols(struct xdp_md *ctx)
{
    void *data = (void *)(long)ctx->data;
    void *data_end = (void *)(long)ctx->data_end;
    struct ethhdr *eth = data;
    struct iphdr *ip = data + sizeof(*eth);

    if ((void *)(ip + 1) > data_end || eth->h_proto != bpf_htons(ETH_P_IP))
        return XDP_PASS;
    count_protocol(ip->protocol);
    return XDP_PASS;
}
