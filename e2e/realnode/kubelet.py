"""kubelet for the real node, and what a cgroup v1/v2 hybrid host without systemd needs of it
(docs/development.md#a-real-node): the cgroupfs driver, failCgroupV1 false (kubelet otherwise
refuses a host whose /sys/fs/cgroup is not cgroup2), failSwapOn false, and a cgroupRoot that exists
in every hierarchy."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from e2e.controlplane import Pki, issue_client_cert, write_kubeconfig
from e2e.realnode.daemons import Daemon
from e2e.realnode.layout import CGROUP_FS, CGROUP_ROOT, KUBELET_PORT, NODE_IP, NODE_NAME, Layout


def cgroup_root_dirs() -> list[Path]:
    """kubelet's cgroupRoot in each mounted hierarchy: v1 controllers, the named systemd one, and
    the v2 one at unified/ (where runc puts pods' processes too)."""
    return [mount / CGROUP_ROOT.lstrip("/") for mount in sorted(CGROUP_FS.iterdir()) if mount.is_dir()]


def configuration(layout: Layout, pki: Pki) -> dict[str, Any]:
    return {
        "apiVersion": "kubelet.config.k8s.io/v1beta1",
        "kind": "KubeletConfiguration",
        "cgroupDriver": "cgroupfs",
        "cgroupRoot": CGROUP_ROOT,
        "cgroupsPerQOS": True,
        "failCgroupV1": False,
        "failSwapOn": False,
        "containerRuntimeEndpoint": f"unix://{layout.containerd_socket}",
        # The API server reaches kubelet (exec, logs, the pod proxy) at the node's address, which is
        # the pod bridge's, on this host only; health on loopback; no unauthenticated port.
        "address": NODE_IP,
        "port": KUBELET_PORT,
        "healthzBindAddress": "127.0.0.1",
        "healthzPort": KUBELET_PORT + 1,
        "readOnlyPort": 0,
        "authentication": {
            "anonymous": {"enabled": False},
            "webhook": {"enabled": False},
            "x509": {"clientCAFile": str(pki.ca_crt)},
        },
        # Only clients with a certificate of the cluster's CA get in (the API server, admins).
        "authorization": {"mode": "AlwaysAllow"},
        "tlsCertFile": "",
        "resolvConf": "/etc/resolv.conf",
        # A shared, busy host: no evictions for disk or memory other tests use.
        "evictionHard": {"memory.available": "50Mi", "nodefs.available": "1%", "imagefs.available": "1%"},
        "imageGCHighThresholdPercent": 100,
        "imageGCLowThresholdPercent": 99,
        "maxPods": 60,
        "serializeImagePulls": False,
        "nodeStatusReportFrequency": "10s",
        "syncFrequency": "10s",
        "fileCheckFrequency": "10s",
        "shutdownGracePeriod": "0s",
    }


def daemon(layout: Layout) -> Daemon:
    return Daemon("kubelet", layout.pids, layout.logs, marker=str(layout.kubelet_root))


def prepare(layout: Layout, pki: Pki, server: str) -> None:
    for directory in cgroup_root_dirs():
        directory.mkdir(exist_ok=True)
    layout.kubelet_root.mkdir(parents=True, exist_ok=True)
    client = issue_client_cert(pki, "kubelet", f"system:node:{NODE_NAME}", "system:nodes")
    write_kubeconfig(layout.kubelet_kubeconfig, server, pki, client=client, user=f"system:node:{NODE_NAME}")
    layout.kubelet_config.write_text(yaml.safe_dump(configuration(layout, pki), sort_keys=False))


def start(layout: Layout, bin_dir: Path) -> None:
    daemon(layout).start(
        [
            str(bin_dir / "kubelet"),
            f"--config={layout.kubelet_config}",
            f"--kubeconfig={layout.kubelet_kubeconfig}",
            f"--root-dir={layout.kubelet_root}",
            f"--hostname-override={NODE_NAME}",
            f"--node-ip={NODE_IP}",
            "--v=1",
        ]
    )
