/* Put before the source of every node-wide program (Tracepoint, Kprobe, Uprobe) by the node agent,
 * which then keeps the selected pods' cgroup ids in bpfleet_pods. Not included with #include: BCC
 * only rewrites map calls in the main file, so this text has to be part of it.
 *
 * In a program: `if (!bpfleet_pod_selected()) return 0;` acts on the selected pods only. */
#include <bpfleet.h>

struct bpfleet_pod {
    char uid[48]; /* the pod's UID: how the agent finds its entry again after a restart */
    __u64 dev;    /* uprobes: the binary file probed for the pod (st_dev, st_ino), so that its */
    __u64 ino;    /* link goes when no pod uses the file any more; 0 for other types */
};

BPF_HASH(bpfleet_pods, __u64, struct bpfleet_pod, 4096);

static __always_inline int bpfleet_pod_selected(void)
{
    __u64 pod = bpfleet_current_pod_cgroup_id();

    return pod != 0 && bpfleet_pods.lookup(&pod) != 0;
}
