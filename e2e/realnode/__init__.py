"""A local cluster with one real node on this host: the control plane of e2e/controlplane.py plus
kube-scheduler, containerd (with runc and the CNI bridge plugin) and kubelet, each with a root, state
directory, socket and cgroup root of its own, so that it coexists with whatever else runs here.

`python -m e2e.realnode up|down|status|install` (make cluster-up, cluster-down, cluster-test).
"""
