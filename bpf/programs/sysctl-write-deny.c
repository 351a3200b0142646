/* sysctl-write-deny — makes /proc/sys read-only for the selected pods.
 *
 * Attach: CgroupSysctl. Function: deny_sysctl_writes.
 * Reading a sysctl works; writing one fails with EPERM.
 * Map `denied` (array of one u64) counts refused writes.
 */
#include <bpfleet.h>

BPF_ARRAY(denied, __u64, 1);

int deny_sysctl_writes(struct bpf_sysctl *ctx)
{
    int zero = 0;

    if (ctx->write) {
        __u64 *count = denied.lookup(&zero);
        if (count)
            __sync_fetch_and_add(count, 1);
        return 0;
    }
    return 1;
}
