/* syscall-counter — system calls made by each selected pod.
 *
 * Attach: Tracepoint, name raw_syscalls:sys_enter. Function: count_syscalls.
 * Map `syscalls` (hash, key: pod cgroup v2 id u64, value: u64 count).
 * Node-wide tracepoint behind the agent's pod filter (bpfleet_entry); the check below is
 * redundant there and kept for readers.
 * Builds with BCC and as CO-RE bytecode (bpfleet_portable.h).
 */
#include <bpfleet_portable.h>

BPFLEET_HASH(syscalls, __u64, __u64, 10240);

static __always_inline void count_syscall(__u64 pod)
{
#ifdef BPFLEET_BYTECODE
    bpfleet_increment(&syscalls, &pod);
#else
    syscalls.increment(pod);
#endif
}

BPFLEET_PROGRAM("tracepoint/raw_syscalls/sys_enter")
int count_syscalls(void *ctx)
{
    if (!bpfleet_pod_selected())
        return 0;
    count_syscall(bpfleet_current_pod_cgroup_id());
    return 0;
}
