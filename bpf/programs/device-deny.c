/* device-deny — refuses access to one character device.
 *
 * Attach: CgroupDevice. Function: deny_device.
 * Parameters MAJOR and MINOR (integers): the device number, e.g. 1 and 5 for /dev/zero.
 * open() of that device fails with EPERM; every other device is untouched.
 * Map `denied` (array of one u64) counts refused accesses.
 */
#include <bpfleet.h>

#if !defined(MAJOR) || !defined(MINOR)
#error "device-deny needs the parameters MAJOR and MINOR"
#endif

BPF_ARRAY(denied, __u64, 1);

int deny_device(struct bpf_cgroup_dev_ctx *ctx)
{
    int zero = 0;
    __u32 device_type = ctx->access_type & 0xFFFF;

    if (device_type == BPF_DEVCG_DEV_CHAR && ctx->major == MAJOR && ctx->minor == MINOR) {
        __u64 *count = denied.lookup(&zero);
        if (count)
            __sync_fetch_and_add(count, 1);
        return 0;
    }
    return 1;
}
