/* egress-port-deny — refuses outgoing connections to one destination port.
 *
 * Attach: CgroupSockAddr, hook Connect4 (function deny_connect4) or Connect6 (deny_connect6).
 * Parameter PORT (integer, 1-65535, required): the destination port to refuse.
 * connect() to that port fails with EPERM; every other connection is untouched.
 * Map `denied` (array of one u64) counts refused connections.
 * Builds with BCC and as CO-RE bytecode (bpfleet_portable.h).
 */
#include <bpfleet_portable.h>

#if !defined(BPFLEET_BYTECODE) && !defined(PORT)
#error "egress-port-deny needs the parameter PORT"
#endif

BPFLEET_PARAM(PORT);
BPFLEET_ARRAY(denied, __u64, 1);

static __always_inline void count_denied(void)
{
    int zero = 0;
#ifdef BPFLEET_BYTECODE
    __u64 *count = bpf_map_lookup_elem(&denied, &zero);
#else
    __u64 *count = denied.lookup(&zero);
#endif
    if (count)
        __sync_fetch_and_add(count, 1);
}

static __always_inline int check_port(struct bpf_sock_addr *ctx)
{
    if (ctx->user_port == bpf_htons((__u16)PORT)) {
        count_denied();
        return 0; /* 0 = refuse: connect() returns EPERM */
    }
    return 1;
}

BPFLEET_PROGRAM("cgroup/connect4")
int deny_connect4(struct bpf_sock_addr *ctx)
{
    return check_port(ctx);
}

BPFLEET_PROGRAM("cgroup/connect6")
int deny_connect6(struct bpf_sock_addr *ctx)
{
    return check_port(ctx);
}
