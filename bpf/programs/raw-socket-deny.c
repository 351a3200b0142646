/* raw-socket-deny — refuses to create raw sockets (SOCK_RAW) in the selected pods.
 *
 * Attach: CgroupSock, hook SockCreate. Function: deny_raw_sockets.
 * socket(..., SOCK_RAW, ...) fails with EPERM; every other socket is created as usual.
 * Map `denied` (array of one u64) counts refused sockets.
 */
#include <bpfleet.h>

#ifndef SOCK_RAW
#define SOCK_RAW 3
#endif

BPF_ARRAY(denied, __u64, 1);

int deny_raw_sockets(struct bpf_sock *sk)
{
    int zero = 0;

    if (sk->type == SOCK_RAW) {
        __u64 *count = denied.lookup(&zero);
        if (count)
            __sync_fetch_and_add(count, 1);
        return 0;
    }
    return 1;
}
