/* bpfleet.h — helpers shared by bpfleet programs (BCC dialect, and the builtins' bytecode build).
 *
 * Include it with `#include <bpfleet.h>`; the node agent puts this folder on the include path.
 */
#ifndef BPFLEET_H
#define BPFLEET_H

#ifdef BPFLEET_BYTECODE
/* CO-RE bytecode (make bytecode): the kernel's types from its BTF, libbpf's helper declarations. */
#include <vmlinux.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>
#else
#include <uapi/linux/bpf.h>
#endif

/* Deepest cgroup nesting bpfleet_skb_pod_cgroup_id() looks through. kubelet pod cgroups sit at
 * level 2 or 3 (kubepods[/<qos>]/pod<uid>), so 16 leaves room for nested kubelet roots. */
#ifndef BPFLEET_MAX_CGROUP_LEVEL
#define BPFLEET_MAX_CGROUP_LEVEL 16
#endif

/* The cgroup v2 id of the pod a packet belongs to, for cgroup_skb programs.
 *
 * Every process of a pod runs in a container cgroup directly below the pod cgroup, so the pod is the
 * parent of the socket's cgroup: the ancestor one level above the socket's own cgroup. Returns 0 if
 * the packet has no socket cgroup. Use it as a map key to keep one entry per pod. */
static __always_inline __u64 bpfleet_skb_pod_cgroup_id(struct __sk_buff *skb)
{
    __u64 own = bpf_skb_cgroup_id(skb);
    __u64 parent = 0;

    if (own == 0)
        return 0;
#pragma unroll
    for (int level = 0; level < BPFLEET_MAX_CGROUP_LEVEL; level++) {
        __u64 id = bpf_skb_ancestor_cgroup_id(skb, level);
        if (id == own)
            return parent;
        parent = id;
    }
    return 0;
}

/* The cgroup v2 id of the pod the current task belongs to, for programs that run in task context
 * (CgroupSockAddr, CgroupSock, CgroupSysctl, CgroupDevice, tracing). Same rule as above: the pod is
 * the parent of the task's own (container) cgroup. Returns 0 when the task's cgroup is the root. */
static __always_inline __u64 bpfleet_current_pod_cgroup_id(void)
{
    __u64 own = bpf_get_current_cgroup_id();
    __u64 parent = 0;

#pragma unroll
    for (int level = 0; level < BPFLEET_MAX_CGROUP_LEVEL; level++) {
        __u64 id = bpf_get_current_ancestor_cgroup_id(level);
        if (id == own)
            return parent;
        parent = id;
    }
    return 0;
}

#endif /* BPFLEET_H */
