/* device-deny — refuses access to one character device.
 *
 * Attach: CgroupDevice. Function: deny_device.
 * Parameters MAJOR and MINOR (integers): the device number, e.g. 1 and 5 for /dev/zero.
 * open() of that device fails with EPERM; every other device is untouched.
 * Map `denied` (array of one u64) counts refused accesses.
 * Builds with BCC and as CO-RE bytecode (bpfleet_portable.h).
 */
#include <bpfleet_portable.h>

#if !defined(BPFLEET_BYTECODE) && (!defined(MAJOR) || !defined(MINOR))
#error "device-deny needs the parameters MAJOR and MINOR"
#endif

#ifdef BPFLEET_BYTECODE
#define BPF_DEVCG_DEV_CHAR (1ULL << 1) /* uapi/linux/bpf.h: an enum value BTF does not keep */
#endif

BPFLEET_PARAM(MAJOR);
BPFLEET_PARAM(MINOR);
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

BPFLEET_PROGRAM("cgroup/dev")
int deny_device(struct bpf_cgroup_dev_ctx *ctx)
{
    __u32 device_type = ctx->access_type & 0xFFFF;

    if (device_type == BPF_DEVCG_DEV_CHAR && ctx->major == MAJOR && ctx->minor == MINOR) {
        count_denied();
        return 0;
    }
    return 1;
}
