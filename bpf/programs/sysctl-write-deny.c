/* sysctl-write-deny — makes /proc/sys read-only for the selected pods.
 *
 * Attach: CgroupSysctl. Function: deny_sysctl_writes.
 * Reading a sysctl works; writing one fails with EPERM.
 * Map `denied` (array of one u64) counts refused writes.
 * Builds with BCC and as CO-RE bytecode (bpfleet_portable.h).
 */
#include <bpfleet_portable.h>

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

BPFLEET_PROGRAM("cgroup/sysctl")
int deny_sysctl_writes(struct bpf_sysctl *ctx)
{
    if (ctx->write) {
        count_denied();
        return 0;
    }
    return 1;
}
