/* exec-counter — programs started (execve) in each selected pod.
 *
 * Attach: Tracepoint, name sched:sched_process_exec. Function: count_execs.
 * Map `execs` (hash, key: pod cgroup v2 id u64, value: u64 count).
 * Node-wide tracepoint behind the agent's pod filter (bpfleet_entry); the check below is
 * redundant there and kept for readers.
 */
#include <bpfleet.h>

BPF_HASH(execs, __u64, __u64, 10240);

int count_execs(void *ctx)
{
    if (!bpfleet_pod_selected())
        return 0;
    __u64 pod = bpfleet_current_pod_cgroup_id();
    execs.increment(pod);
    return 0;
}
