"""The pod network of the real node: a bridge of its own with the node's address, and a CNI
conflist for the bridge plugin (host-local addresses). It reaches this host only: no masquerade,
no route out."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from e2e.realnode.layout import BRIDGE, NODE_IP, POD_CIDR, Layout

# The in-cluster `kubernetes` Service address (e2e/controlplane.py's KUBERNETES_SERVICE_IP, in its
# serving certificate): put on the bridge, where apiproxy.py forwards it to the API server, since
# the node runs no kube-proxy.
SERVICE_IP = "10.0.0.1"


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=check)


def _link_exists(name: str) -> bool:
    return _ip("link", "show", "dev", name, check=False).returncode == 0


def _has_address(address: str) -> bool:
    return f" {address}/" in _ip("-o", "addr", "show", "dev", BRIDGE).stdout


def ensure_bridge() -> None:
    if not _link_exists(BRIDGE):
        _ip("link", "add", BRIDGE, "type", "bridge")
    prefix = POD_CIDR.split("/")[1]
    for address, length in ((NODE_IP, prefix), (SERVICE_IP, "32")):
        if not _has_address(address):
            _ip("addr", "add", f"{address}/{length}", "dev", BRIDGE)
    _ip("link", "set", BRIDGE, "up")


def conflist(layout: Layout) -> dict[str, object]:
    return {
        "cniVersion": "1.0.0",
        "name": "bpfleet-realnode",
        "plugins": [
            {
                "type": "bridge",
                "bridge": BRIDGE,
                "isGateway": True,
                "ipMasq": False,
                "hairpinMode": True,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{"subnet": POD_CIDR, "gateway": NODE_IP}]],
                    "routes": [{"dst": "0.0.0.0/0"}],
                    "dataDir": str(layout.cni_data_dir),
                },
            }
        ],
    }


def write_cni_config(layout: Layout) -> Path:
    layout.cni_conf_dir.mkdir(parents=True, exist_ok=True)
    path = layout.cni_conf_dir / "10-bpfleet-realnode.conflist"
    path.write_text(json.dumps(conflist(layout), indent=2) + "\n")
    return path


def bridge_ports() -> list[str]:
    """The host ends of pods' veths on our bridge."""
    if not _link_exists(BRIDGE):
        return []
    links = json.loads(_ip("-j", "link", "show", "master", BRIDGE).stdout or "[]")
    return [str(link["ifname"]) for link in links]


def remove() -> None:
    """Deletes the veths left on our bridge (their pods' netns are gone or going) and the bridge."""
    for port in bridge_ports():
        _ip("link", "delete", port, check=False)
    if _link_exists(BRIDGE):
        _ip("link", "delete", BRIDGE)
