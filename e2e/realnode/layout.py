"""Every name and path the real node owns. Teardown removes these and nothing else."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from e2e.tools import cache_dir

NODE_NAME = "bpfleet-real-node"
# Under /run and /var/lib, not the cache: containerd and kubelet keep sockets, netns and tmpfs
# mounts there, and a path in a home directory may be on a filesystem overlayfs refuses.
RUN_DIR = Path("/run/bpfleet-realnode")
LIB_DIR = Path("/var/lib/bpfleet-realnode")
# kubelet's cgroupRoot: its kubepods tree lands below it in every hierarchy, apart from any other
# kubepods-like tree on this host (other tests' pod simulators make their own).
CGROUP_ROOT = "/bpfleet-realnode"
BRIDGE = "bpfleet-rn0"
POD_CIDR = "10.213.0.0/24"
# The bridge's own address: the pods' gateway and the node's InternalIP, reachable from this host only.
NODE_IP = "10.213.0.1"
KUBELET_PORT = 10250
CGROUP_FS = Path("/sys/fs/cgroup")
BPFFS = Path("/sys/fs/bpf")
# The chart's agent pins here, so that it never adopts other agents' pins on this host.
AGENT_BPFFS_ROOT = BPFFS / "bpfleet-realnode"
RELEASE = "bpfleet"
NAMESPACE = "bpfleet-system"


@dataclass(frozen=True)
class Layout:
    """Where each component of the real node keeps its files."""

    state: Path  # logs, pids, configs, the control plane's state (in bpfleet's cache)
    run: Path = RUN_DIR
    lib: Path = LIB_DIR

    @classmethod
    def default(cls) -> Layout:
        override = os.environ.get("BPFLEET_REALNODE_STATE")
        return cls(Path(override) if override else cache_dir() / "run" / "realnode")

    @property
    def controlplane(self) -> Path:
        return self.state / "controlplane"

    @property
    def kubeconfig(self) -> Path:
        return self.controlplane / "kubeconfig"

    @property
    def logs(self) -> Path:
        return self.state / "logs"

    @property
    def pids(self) -> Path:
        return self.state / "pids"

    @property
    def containerd_root(self) -> Path:
        return self.lib / "containerd"

    @property
    def containerd_state(self) -> Path:
        return self.run / "containerd"

    @property
    def containerd_socket(self) -> Path:
        return self.run / "containerd.sock"

    @property
    def containerd_config(self) -> Path:
        return self.state / "containerd.toml"

    @property
    def cni_conf_dir(self) -> Path:
        return self.state / "cni"

    @property
    def cni_data_dir(self) -> Path:
        return self.lib / "cni-ipam"

    @property
    def kubelet_root(self) -> Path:
        return self.lib / "kubelet"

    @property
    def kubelet_config(self) -> Path:
        return self.state / "kubelet.yaml"

    @property
    def kubelet_kubeconfig(self) -> Path:
        return self.state / "kubelet.kubeconfig"

    @property
    def scheduler_kubeconfig(self) -> Path:
        return self.state / "scheduler.kubeconfig"
