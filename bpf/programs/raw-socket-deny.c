/* raw-socket-deny — refuses to create raw sockets (SOCK_RAW) in the selected pods.
 *
 * Attach: CgroupSock, hook SockCreate. Function: deny_raw_sockets.
 * socket(..., SOCK_RAW, ...) fails with EPERM; every other socket is created as usual.
 * Map `denied` (array of one u64) counts refused sockets.
 * Builds with BCC and as CO-RE bytecode (bpfleet_portable.h).
 */
#include <bpfleet_portable.h>

#ifndef SOCK_RAW
#define SOCK_RAW 3
#endif

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

BPFLEET_PROGRAM("cgroup/sock_create")
int deny_raw_sockets(struct bpf_sock *sk)
{
    if (sk->type == SOCK_RAW) {
        count_denied();
        return 0;
    }
    return 1;
}
