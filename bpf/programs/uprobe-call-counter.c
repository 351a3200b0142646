/* uprobe-call-counter — calls of one function of a binary, in each selected pod.
 *
 * Attach: Uprobe (function count_calls: counts entries) or Uretprobe (function count_returns:
 * counts returns), with the binary and its symbol or offset of your choice.
 * Map `calls` (hash, key: pod cgroup v2 id u64, value: u64 count).
 * The probe is on the binary file, shared by every process that runs it: the agent's pod filter
 * (bpfleet_entry) keeps it to the selected pods; the checks below are redundant there.
 * Builds with BCC and as CO-RE bytecode (bpfleet_portable.h).
 */
#include <bpfleet_portable.h>

BPFLEET_HASH(calls, __u64, __u64, 10240);

static __always_inline int count(void)
{
    if (!bpfleet_pod_selected())
        return 0;
    __u64 pod = bpfleet_current_pod_cgroup_id();
#ifdef BPFLEET_BYTECODE
    bpfleet_increment(&calls, &pod);
#else
    calls.increment(pod);
#endif
    return 0;
}

BPFLEET_PROGRAM("uprobe")
int count_calls(struct pt_regs *ctx)
{
    return count();
}

BPFLEET_PROGRAM("uretprobe")
int count_returns(struct pt_regs *ctx)
{
    return count();
}
