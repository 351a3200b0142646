/* syscall-counter — system calls made by each selected pod.
 *
 * Attach: Tracepoint, name raw_syscalls:sys_enter. Function: count_syscalls.
 * Map `syscalls` (hash, key: pod cgroup v2 id u64, value: u64 count).
 * Node-wide tracepoint behind the agent's pod filter (bpfleet_entry); the check below is
 * redundant there and kept for readers.
 */
#include <bpfleet.h>

BPF_HASH(syscalls, __u64, __u64, 10240);

int count_syscalls(void *ctx)
{
    if (!bpfleet_pod_selected())
        return 0;
    __u64 pod = bpfleet_current_pod_cgroup_id();
    syscalls.increment(pod);
    return 0;
}
