/* egress-port-deny — refuses outgoing connections to one destination port.
 *
 * Attach: CgroupSockAddr, hook Connect4 (function deny_connect4) or Connect6 (deny_connect6).
 * Parameter PORT (integer, 1-65535, required): the destination port to refuse.
 * connect() to that port fails with EPERM; every other connection is untouched.
 * Map `denied` (array of one u64) counts refused connections.
 */
#include <bpfleet.h>

#ifndef PORT
#error "egress-port-deny needs the parameter PORT"
#endif

BPF_ARRAY(denied, __u64, 1);

static __always_inline int check_port(struct bpf_sock_addr *ctx)
{
    int zero = 0;

    if (ctx->user_port == bpf_htons(PORT)) {
        __u64 *count = denied.lookup(&zero);
        if (count)
            __sync_fetch_and_add(count, 1);
        return 0; /* 0 = refuse: connect() returns EPERM */
    }
    return 1;
}

int deny_connect4(struct bpf_sock_addr *ctx)
{
    return check_port(ctx);
}

int deny_connect6(struct bpf_sock_addr *ctx)
{
    return check_port(ctx);
}
