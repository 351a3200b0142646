/* exec-counter — programs started (execve) in each selected pod.
 *
 * Attach: Tracepoint, name sched:sched_process_exec. Function: count_execs.
 * Map `execs` (hash, key: pod cgroup v2 id u64, value: u64 count).
 * Node-wide tracepoint behind the agent's pod filter (bpfleet_entry); the check below is
 * redundant there and kept for readers.
 * Builds with BCC and as CO-RE bytecode (bpfleet_portable.h).
 */
#include <bpfleet_portable.h>

BPFLEET_HASH(execs, __u64, __u64, 10240);

static __always_inline void count_exec(__u64 pod)
{
#ifdef BPFLEET_BYTECODE
    bpfleet_increment(&execs, &pod);
#else
    execs.increment(pod);
#endif
}

BPFLEET_PROGRAM("tracepoint/sched/sched_process_exec")
int count_execs(void *ctx)
{
    if (!bpfleet_pod_selected())
        return 0;
    count_exec(bpfleet_current_pod_cgroup_id());
    return 0;
}
