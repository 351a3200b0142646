"""Brings the real node up and down, and installs the chart on it.

up: control plane (+ deployment, replicaset, daemonset controllers) → kube-scheduler → the bridge
and its API address proxy → containerd with the images → kubelet, until the Node is Ready.
down: the reverse, then every leftover (teardown.py). Both are safe to rerun.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

from e2e.controlplane import ControlPlane, build_binaries, free_ports
from e2e.realnode import containerd, kubelet, network, teardown
from e2e.realnode.daemons import Daemon, log
from e2e.realnode.images import Images, build_all, import_into
from e2e.realnode.layout import (
    AGENT_BPFFS_ROOT,
    BPFFS,
    CGROUP_FS,
    CGROUP_ROOT,
    NAMESPACE,
    NODE_IP,
    NODE_NAME,
    RELEASE,
    Layout,
)
from e2e.tools import REPO_ROOT, cache_dir, tool_path

# nodelifecycle lifts the not-ready taint kubelet registers with; root-ca-cert-publisher makes the
# kube-root-ca.crt ConfigMap every pod's service-account volume needs.
WORKLOAD_CONTROLLERS = ("deployment", "replicaset", "daemonset", "nodelifecycle", "root-ca-cert-publisher")
# The chart's agent serves metrics on the node's address (the pod proxy of the API server connects
# there), on a port no other agent on this host uses.
AGENT_METRICS_PORT = 19101
# podman's images as archives for `ctr images import`, by content-keyed name: kept across cluster-down.
IMAGE_ARCHIVES = cache_dir() / "images" / "realnode"
HOST_TOOLS = ("containerd", "ctr", "runc", "podman", "gcc", "ip", "umount")


def control_plane(layout: Layout) -> ControlPlane:
    return ControlPlane(state_dir=layout.controlplane, extra_controllers=WORKLOAD_CONTROLLERS)


def scheduler(layout: Layout) -> Daemon:
    return Daemon("kube-scheduler", layout.pids, layout.logs, marker=str(layout.scheduler_kubeconfig))


def api_proxy(layout: Layout) -> Daemon:
    return Daemon(
        "apiproxy", layout.pids, layout.logs, marker=str(layout.state), binary=Path(sys.executable).name
    )


def kubectl(layout: Layout, *args: str, check: bool = True) -> str:
    result = subprocess.run(
        [str(tool_path("kubectl")), "--kubeconfig", str(layout.kubeconfig), *args],
        capture_output=True,
        text=True,
        check=False,
    )
    if check and result.returncode != 0:
        raise RuntimeError(f"kubectl {' '.join(args)}: {result.stderr.strip()}")
    return result.stdout


def _check_host() -> None:
    missing = [tool for tool in HOST_TOOLS if shutil.which(tool) is None]
    if missing or not (containerd.CNI_BIN_DIR / "bridge").exists():
        raise RuntimeError(
            f"missing on this host: {', '.join(missing) or 'the CNI plugins'}; "
            "run e2e/scripts/install-node-deps.sh (make cluster-up does)"
        )
    if not (CGROUP_FS / "unified").is_dir() and not (CGROUP_FS / "cgroup.controllers").exists():
        raise RuntimeError("no cgroup v2 hierarchy: the agent attaches to pods' v2 cgroups")


def _make_bpffs_shared(layout: Layout) -> None:
    """The agent's bpffs mount is Bidirectional (its pins must be the host's), which containerd
    allows only from a shared mount; real nodes' init makes every mount shared."""
    propagation = subprocess.run(
        ["findmnt", "-n", "-o", "PROPAGATION", str(BPFFS)], capture_output=True, text=True, check=True
    ).stdout.strip()
    if "shared" not in propagation:
        subprocess.run(["mount", "--make-shared", str(BPFFS)], check=True)
        (layout.run / "bpffs-made-shared").write_text("")


def _wait(what: str, check: object, timeout: float, daemon: Daemon | None = None) -> None:
    deadline = time.monotonic() + timeout
    while not check():  # type: ignore[operator]
        if daemon is not None and not daemon.running():
            raise RuntimeError(f"{daemon.name} exited while waiting for {what}; its log:\n{daemon.tail()}")
        if time.monotonic() > deadline:
            tail = f"; log of {daemon.name}:\n{daemon.tail()}" if daemon else ""
            raise TimeoutError(f"timed out waiting for {what}{tail}")
        time.sleep(0.5)


def node_ready(layout: Layout) -> bool:
    out = kubectl(layout, "get", "node", NODE_NAME, "-o", "json", check=False)
    if not out:
        return False
    conditions = json.loads(out)["status"].get("conditions", [])
    return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)


def up(layout: Layout) -> Images:
    started = time.monotonic()
    _check_host()
    bin_dir = build_binaries()
    for name in ("kubelet", "kube-scheduler"):
        if not (bin_dir / name).exists():
            raise RuntimeError(f"{name} is not in {bin_dir}: e2e/scripts/build-control-plane.sh builds it")
    images = build_all()
    log("images ready", seconds=f"{time.monotonic() - started:.0f}")
    (layout.state / "images.json").parent.mkdir(parents=True, exist_ok=True)
    (layout.state / "images.json").write_text(json.dumps(images.__dict__, indent=2) + "\n")

    plane = control_plane(layout)
    fresh = not plane.healthy()
    plane.start()  # reuses a healthy one
    if fresh:  # new certificates and an empty etcd: what runs below is restarted against them
        for daemon in (kubelet.daemon(layout), scheduler(layout), api_proxy(layout)):
            daemon.stop()

    sched = scheduler(layout)
    if not sched.running():
        layout.scheduler_kubeconfig.write_bytes(layout.kubeconfig.read_bytes())
        [port] = free_ports(1)
        sched.start(
            [
                str(bin_dir / "kube-scheduler"),
                f"--kubeconfig={layout.scheduler_kubeconfig}",
                f"--authentication-kubeconfig={layout.scheduler_kubeconfig}",
                f"--authorization-kubeconfig={layout.scheduler_kubeconfig}",
                "--leader-elect=false",
                "--bind-address=127.0.0.1",
                f"--secure-port={port}",
            ]
        )

    layout.run.mkdir(parents=True, exist_ok=True)
    network.ensure_bridge()
    network.write_cni_config(layout)
    _make_bpffs_shared(layout)
    proxy = api_proxy(layout)
    if not proxy.running():
        target = plane.server_url.removeprefix("https://")
        proxy.start(
            [
                sys.executable,
                "-m",
                "e2e.realnode.apiproxy",
                f"{network.SERVICE_IP}:443",
                target,
                str(layout.state),
            ]
        )

    config_before = layout.containerd_config.read_text() if layout.containerd_config.exists() else ""
    if containerd.config(layout, images.pause) != config_before or not containerd.daemon(layout).running():
        containerd.start(layout, images.pause)
    import_into(containerd.ctr(layout), images.all(), IMAGE_ARCHIVES)
    log("images imported", seconds=f"{time.monotonic() - started:.0f}")
    # The cluster suite's helm upgrade rolls the agents to this second tag of the same image.
    subprocess.run(
        [*containerd.ctr(layout), "images", "tag", "--force", images.agent, upgrade_ref(images)],
        check=True,
        capture_output=True,
    )

    node = kubelet.daemon(layout)
    if not node.running():
        kubelet.prepare(layout, plane.pki, plane.server_url)
        kubelet.start(layout, Path(bin_dir))
    _wait(f"Node {NODE_NAME} Ready", lambda: node_ready(layout), 120, node)
    log(
        "real node ready",
        node=NODE_NAME,
        kubeconfig=layout.kubeconfig,
        seconds=f"{time.monotonic() - started:.0f}",
    )
    return images


def upgrade_ref(images: Images) -> str:
    return f"{images.agent}-upgrade"


def load_images(layout: Layout) -> Images:
    return Images(**json.loads((layout.state / "images.json").read_text()))


def helm_values(images: Images) -> list[str]:
    def repo_tag(ref: str) -> tuple[str, str]:
        repository, _, tag = ref.rpartition(":")
        return repository, tag

    operator_repo, operator_tag = repo_tag(images.operator)
    agent_repo, agent_tag = repo_tag(images.agent)
    values = {
        "operator.image.repository": operator_repo,
        "operator.image.tag": operator_tag,
        "agent.image.repository": agent_repo,
        "agent.image.tag": agent_tag,
        # kubelet's cgroupRoot, in the v2 hierarchy the agent attaches in.
        "agent.kubeletCgroupRoot": str(CGROUP_FS / "unified" / CGROUP_ROOT.lstrip("/")),
        "agent.bpffsRoot": str(AGENT_BPFFS_ROOT),
        "agent.metrics.bindAddress": NODE_IP,
    }
    # --set-string: a tag is a content hash, and one of only digits would reach the chart's
    # schema as a number (helm's --set types what it can parse).
    strings = [arg for key, value in values.items() for arg in ("--set-string", f"{key}={value}")]
    return [*strings, "--set", f"agent.metrics.port={AGENT_METRICS_PORT}"]


def install(layout: Layout) -> None:
    """helm upgrade --install of the chart with this tree's images; the CRDs applied first, as
    kind-up.sh does, so that an upgrade gets changed CRDs too."""
    images = load_images(layout)
    crds = str(REPO_ROOT / "charts" / "bpfleet" / "crds")
    kubectl(layout, "apply", "--server-side", "--force-conflicts", "-f", crds)
    kubectl(layout, "wait", "--for=condition=Established", "--timeout=60s", "-f", crds)
    helm = [str(tool_path("helm")), "--kubeconfig", str(layout.kubeconfig)]
    subprocess.run(
        [
            *helm,
            "upgrade",
            "--install",
            RELEASE,
            str(REPO_ROOT / "charts" / "bpfleet"),
            "-n",
            NAMESPACE,
            "--create-namespace",
            "--skip-crds",
            *helm_values(images),
            "--wait",
            "--timeout",
            "5m",
        ],
        check=True,
        stdout=sys.stderr,
    )
    log("bpfleet installed", release=RELEASE, namespace=NAMESPACE)


def down(layout: Layout) -> None:
    """Stops every daemon, then removes what they leave; the control plane's state goes with it."""
    kubelet.daemon(layout).stop()
    teardown.remove_cgroups()  # pods' processes: containers, sandboxes
    containerd.stop(layout)
    teardown.remove_cgroups()  # and what a shim started meanwhile
    api_proxy(layout).stop()
    scheduler(layout).stop()
    control_plane(layout).stop()
    marker = layout.run / "bpffs-made-shared"
    if marker.exists():
        subprocess.run(["mount", "--make-private", str(BPFFS)], check=False)
    teardown.remove_directories(layout)
    network.remove()
    teardown.remove_pins()
    for directory in (layout.controlplane, layout.pids, layout.cni_conf_dir):
        shutil.rmtree(directory, ignore_errors=True)
    log("real node removed; logs kept", logs=layout.logs)


def status(layout: Layout) -> int:
    daemons = [scheduler(layout), api_proxy(layout), containerd.daemon(layout), kubelet.daemon(layout)]
    healthy = control_plane(layout).healthy()
    print(f"control plane: {'running' if healthy else 'not running'} ({layout.controlplane})")
    for daemon in daemons:
        pid = daemon.pid()
        print(f"  {daemon.name:<16} {f'pid {pid}' if pid else 'not running'}")
        healthy = healthy and pid is not None
    ready = healthy and node_ready(layout)
    print(f"node {NODE_NAME}: {'Ready' if ready else 'not ready'}")
    print(f"kubeconfig: {layout.kubeconfig}")
    return 0 if ready else 1
