/* tc-port-drop — drops IPv4 TCP and UDP packets to one destination port on a pod's interface.
 *
 * Attach: Tc, direction Ingress (on the pod side: packets reaching the pod) or Egress on the Host
 * side (packets the host sends into the pod). Function: drop_port.
 * Parameter PORT (integer, 1-65535, required).
 * Map `dropped` (array of one u64) counts dropped packets. Everything else passes.
 * Builds with BCC and as CO-RE bytecode (bpfleet_portable.h).
 */
#include <bpfleet_portable.h>
#include <bpfleet_net.h>

#if !defined(BPFLEET_BYTECODE) && !defined(PORT)
#error "tc-port-drop needs the parameter PORT"
#endif

BPFLEET_PARAM(PORT);
BPFLEET_ARRAY(dropped, __u64, 1);

static __always_inline void count_dropped(void)
{
    int zero = 0;
#ifdef BPFLEET_BYTECODE
    __u64 *count = bpf_map_lookup_elem(&dropped, &zero);
#else
    __u64 *count = dropped.lookup(&zero);
#endif
    if (count)
        __sync_fetch_and_add(count, 1);
}

BPFLEET_PROGRAM("tc")
int drop_port(struct __sk_buff *skb)
{
    struct iphdr ip;
    __u16 dest_port;

    if (skb->protocol != bpf_htons(ETH_P_IP))
        return TC_ACT_OK;
    /* tc sees the frame from its Ethernet header on. */
    if (bpf_skb_load_bytes(skb, ETH_HLEN, &ip, sizeof(ip)) < 0)
        return TC_ACT_OK;
    if (ip.protocol != IPPROTO_UDP && ip.protocol != IPPROTO_TCP)
        return TC_ACT_OK;
    if (bpf_skb_load_bytes(skb, ETH_HLEN + ip.ihl * 4 + 2, &dest_port, sizeof(dest_port)) < 0)
        return TC_ACT_OK;
    if (dest_port != bpf_htons((__u16)PORT))
        return TC_ACT_OK;
    count_dropped();
    return TC_ACT_SHOT;
}
