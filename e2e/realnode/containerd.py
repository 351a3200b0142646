"""containerd for the real node: a root, state directory and socket of its own, runc, the CNI
plugins of Debian's containernetworking-plugins, and the CRI settings this kind of host needs."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

from e2e.realnode.daemons import Daemon, pids_with_argument
from e2e.realnode.layout import Layout

CNI_BIN_DIR = Path("/usr/lib/cni")  # Debian's containernetworking-plugins
SHIM = "containerd-shim-runc-v2"


def config(layout: Layout, sandbox_image: str) -> str:
    """containerd's config. restrict_oom_score_adj: without it runc fails to start a sandbox here
    ("can't get final child's PID from pipe"), since this host refuses to lower oom_score_adj.
    netns_mounts_under_state_dir: pods' network namespaces under our state, never in /run/netns
    where podman keeps its own."""
    cri = 'plugins."io.containerd.grpc.v1.cri"'
    return f"""version = 2
root = "{layout.containerd_root}"
state = "{layout.containerd_state}"
disabled_plugins = ["io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs",
  "io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.devmapper"]

[grpc]
  address = "{layout.containerd_socket}"

[ttrpc]
  address = "{layout.containerd_socket}.ttrpc"

[{cri}]
  sandbox_image = "{sandbox_image}"
  restrict_oom_score_adj = true
  netns_mounts_under_state_dir = true
  disable_apparmor = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  [{cri}.cni]
    bin_dir = "{CNI_BIN_DIR}"
    conf_dir = "{layout.cni_conf_dir}"
    max_conf_num = 1
  [{cri}.containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [{cri}.containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [{cri}.containerd.runtimes.runc.options]
        BinaryName = "/usr/sbin/runc"
        SystemdCgroup = false
"""


def daemon(layout: Layout) -> Daemon:
    return Daemon("containerd", layout.pids, layout.logs, marker=str(layout.containerd_config))


def ctr(layout: Layout) -> list[str]:
    """ctr on our socket, in the namespace the CRI plugin (kubelet's images and pods) uses."""
    return ["ctr", "--address", str(layout.containerd_socket), "--namespace", "k8s.io"]


def start(layout: Layout, sandbox_image: str, timeout: float = 60.0) -> None:
    proc = daemon(layout)
    layout.containerd_config.parent.mkdir(parents=True, exist_ok=True)
    layout.containerd_config.write_text(config(layout, sandbox_image))
    if proc.running():
        # A changed config (a new pause image) needs a restart; pods keep running in their shims.
        proc.stop()
    proc.start(["containerd", "--config", str(layout.containerd_config)])
    deadline = time.monotonic() + timeout
    while subprocess.run([*ctr(layout), "version"], capture_output=True).returncode != 0:
        if not proc.running():
            raise RuntimeError(f"containerd exited; its log:\n{proc.tail()}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"containerd did not serve on {layout.containerd_socket}; log:\n{proc.tail()}")
        time.sleep(0.2)


def stop(layout: Layout) -> None:
    daemon(layout).stop()
    # Shims are daemonised: found by our socket in their command line.
    for pid in pids_with_argument(SHIM, str(layout.containerd_socket)):
        subprocess.run(["kill", "-KILL", str(pid)], check=False)
