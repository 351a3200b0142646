/* Put before the source of every filtered program (Tracepoint, Kprobe, Uprobe for pods) by the node
 * agent, which keeps the selected pods' cgroup ids in bpfleet_pods. Not included with #include: BCC
 * only rewrites map calls in the main file, so this text has to be part of it. It comes before the
 * user's text, so nothing the user defines changes it.
 *
 * The filter is enforced, not offered: the agent attaches bpfleet_entry, which tail-calls the
 * user's function (slot 0 of bpfleet_progs) only for tasks of the selected pods. The user's
 * function is reachable through nothing else. bpfleet_pods is read-only for programs
 * (BPF_F_RDONLY_PROG), so no program can select a pod; the agent writes it through bpf(2).
 *
 * A program may still call `bpfleet_pod_selected()`; it is always true there, and harmless. */
#include <bpfleet.h>

struct bpfleet_pod {
    char uid[48]; /* the pod's UID: how the agent finds its entry again after a restart */
    __u64 dev;    /* uprobes: the binary file probed for the pod (st_dev, st_ino), so that its */
    __u64 ino;    /* link goes when no pod uses the file any more; 0 for other types */
};

/* (1U << 7) is BPF_F_RDONLY_PROG, written as a number so that no -D parameter can rename it. */
BPF_F_TABLE("hash", __u64, struct bpfleet_pod, bpfleet_pods, 4096, (1U << 7));
BPF_PROG_ARRAY(bpfleet_progs, 1);

static __always_inline int bpfleet_pod_selected(void)
{
    __u64 pod = bpfleet_current_pod_cgroup_id();

    return pod != 0 && bpfleet_pods.lookup(&pod) != 0;
}

int bpfleet_entry(void *ctx)
{
    if (bpfleet_pod_selected())
        bpfleet_progs.call(ctx, 0);
    return 0;
}
