/* bpfleet_unfiltered.h — put before ClusterEbpfPrograms of scope Node by the node agent.
 *
 * Such a program runs for every process of the node, by the cluster admin's choice: there is no
 * pod filter, so bpfleet_pod_selected() (which filtered programs and builtins may call) is true
 * for every task, and a builtin written for pods counts the whole node. */
#ifndef BPFLEET_UNFILTERED_H
#define BPFLEET_UNFILTERED_H

#include <bpfleet.h>

static __always_inline int bpfleet_pod_selected(void)
{
    return 1;
}

#endif /* BPFLEET_UNFILTERED_H */
