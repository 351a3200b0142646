/* connection-audit — who connects where: per pod, destination address and port, a count.
 *
 * Attach: CgroupSockAddr, hook Connect4. Function: audit_connect4.
 * Map `connections` (hash, key: struct connection {pod cgroup id u64, IPv4 destination u32 in
 * network byte order, destination port u16 in host order}, value: u64 connect() calls).
 * Every connection is allowed. Builds with BCC and as CO-RE bytecode (bpfleet_portable.h).
 */
#include <bpfleet_portable.h>

struct connection {
    __u64 pod;
    __u32 address;
    __u16 port;
    __u16 unused;
};

BPFLEET_HASH(connections, struct connection, __u64, 10240);

static __always_inline void count_connection(struct connection *seen)
{
#ifdef BPFLEET_BYTECODE
    bpfleet_increment(&connections, seen);
#else
    connections.increment(*seen);
#endif
}

BPFLEET_PROGRAM("cgroup/connect4")
int audit_connect4(struct bpf_sock_addr *ctx)
{
    struct connection seen = {};

    seen.pod = bpfleet_current_pod_cgroup_id();
    seen.address = ctx->user_ip4;
    seen.port = bpf_ntohs(ctx->user_port);
    count_connection(&seen);
    return 1;
}
