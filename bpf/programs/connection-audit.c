/* connection-audit — who connects where: per pod, destination address and port, a count.
 *
 * Attach: CgroupSockAddr, hook Connect4. Function: audit_connect4.
 * Map `connections` (hash, key: struct connection {pod cgroup id u64, IPv4 destination u32 in
 * network byte order, destination port u16 in host order}, value: u64 connect() calls).
 * Every connection is allowed.
 */
#include <bpfleet.h>

struct connection {
    __u64 pod;
    __u32 address;
    __u16 port;
    __u16 unused;
};

BPF_HASH(connections, struct connection, __u64, 10240);

int audit_connect4(struct bpf_sock_addr *ctx)
{
    struct connection seen = {};

    seen.pod = bpfleet_current_pod_cgroup_id();
    seen.address = ctx->user_ip4;
    seen.port = bpf_ntohs(ctx->user_port);
    connections.increment(seen);
    return 1;
}
