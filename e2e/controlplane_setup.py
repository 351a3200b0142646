"""What the control plane (e2e/controlplane.py) runs: the pinned binaries and their build, the
ports of a run and what later processes read of it, and each component's command line."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

from e2e.controlplane_pki import LOOPBACK, SERVICE_CIDR, Pki
from e2e.tools import REPO_ROOT, cache_dir

KUBE_VERSION = "v1.35.4"
ETCD_VERSION = "v3.6.16"
BUILD_SCRIPT = REPO_ROOT / "e2e" / "scripts" / "build-control-plane.sh"
SA_ISSUER = "https://kubernetes.default.svc.cluster.local"
# resourcequota computes quotas' usage (admission refuses objects a quota counts until it has);
# clusterrole-aggregation fills the built-in admin, edit and view roles from aggregated ClusterRoles;
# validatingadmissionpolicy-status-controller type-checks policies against the schemas (status.typeChecking).
CONTROLLERS = ",".join(
    [
        "garbagecollector",
        "namespace",
        "serviceaccount",
        "serviceaccount-token",
        "resourcequota",
        "clusterrole-aggregation",
        "validatingadmissionpolicy-status-controller",  # (no short alias)
    ]
)
# Start order; stop goes in reverse so nothing loses its backend while still running.
COMPONENTS = ("etcd", "kube-apiserver", "kube-controller-manager")


def log(message: str, **fields: object) -> None:
    """Progress line on stderr, so that stdout stays clean for `kubeconfig`/`up` output."""
    extra = "".join(f" {key}={value}" for key, value in fields.items())
    print(f"[controlplane] {message}{extra}", file=sys.stderr, flush=True)


def default_state_dir() -> Path:
    override = os.environ.get("BPFLEET_STATE_DIR")
    return Path(override) if override else cache_dir() / "run" / "default"


def expected_bin_dir() -> Path:
    """Where build-control-plane.sh puts the pinned binaries (lets callers check without building)."""
    return cache_dir() / "control-plane" / f"kube-{KUBE_VERSION}-etcd-{ETCD_VERSION}"


def binaries_present(bin_dir: Path | None = None) -> bool:
    directory = bin_dir or expected_bin_dir()
    return all(os.access(directory / name, os.X_OK) for name in COMPONENTS)


def build_binaries() -> Path:
    """Runs the build script (a no-op when cached) and returns the directory it prints last."""
    env = dict(os.environ)
    env.setdefault("KUBE_VERSION", KUBE_VERSION)
    env.setdefault("ETCD_VERSION", ETCD_VERSION)
    log("resolving binaries", script=BUILD_SCRIPT)
    result = subprocess.run(
        ["bash", str(BUILD_SCRIPT)], stdout=subprocess.PIPE, text=True, env=env, check=False
    )
    lines = [line for line in result.stdout.splitlines() if line.strip()]
    if result.returncode != 0 or not lines:
        raise RuntimeError(f"{BUILD_SCRIPT} failed (exit {result.returncode}); see its stderr above")
    bin_dir = Path(lines[-1].strip())
    if not binaries_present(bin_dir):
        raise RuntimeError(f"{BUILD_SCRIPT} reported {bin_dir} but {', '.join(COMPONENTS)} are not all there")
    return bin_dir


def free_ports(count: int) -> list[int]:
    """Distinct free loopback ports; sockets stay open until all are chosen so none repeats."""
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind((LOOPBACK, 0))
            sockets.append(sock)
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


@dataclass(frozen=True)
class Ports:
    etcd_client: int
    etcd_peer: int
    apiserver: int
    controller_manager: int


@dataclass(frozen=True)
class RunInfo:
    """What a running control plane needs a later process to know; stored as controlplane.json."""

    bin_dir: str
    ports: Ports

    @classmethod
    def load(cls, path: Path) -> RunInfo:
        data = json.loads(path.read_text())
        return cls(bin_dir=data["bin_dir"], ports=Ports(**data["ports"]))

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(asdict(self), indent=2) + "\n")


def etcd_args(state_dir: Path, ports: Ports) -> list[str]:
    client = f"http://{LOOPBACK}:{ports.etcd_client}"
    peer = f"http://{LOOPBACK}:{ports.etcd_peer}"
    return [
        "--name=bpfleet",
        f"--data-dir={state_dir / 'etcd'}",
        f"--listen-client-urls={client}",
        f"--advertise-client-urls={client}",
        f"--listen-peer-urls={peer}",
        f"--initial-advertise-peer-urls={peer}",
        f"--initial-cluster=bpfleet={peer}",
        "--unsafe-no-fsync=true",  # throwaway data: durability only costs time
    ]


def apiserver_args(ports: Ports, pki: Pki) -> list[str]:
    return [
        f"--etcd-servers=http://{LOOPBACK}:{ports.etcd_client}",
        f"--bind-address={LOOPBACK}",
        f"--advertise-address={LOOPBACK}",
        f"--secure-port={ports.apiserver}",
        f"--cert-dir={pki.dir}",
        f"--tls-cert-file={pki.serving_crt}",
        f"--tls-private-key-file={pki.serving_key}",
        f"--client-ca-file={pki.ca_crt}",
        # How it authenticates to kubelets (exec, logs, the pod proxy): as an admin.
        f"--kubelet-client-certificate={pki.admin_crt}",
        f"--kubelet-client-key={pki.admin_key}",
        # At their InternalIP: a local node's name resolves nowhere.
        "--kubelet-preferred-address-types=InternalIP,Hostname",
        # Node: what a real kubelet needs; RBAC for everyone else.
        "--authorization-mode=Node,RBAC",
        # Added to the default plugins (ResourceQuota, ServiceAccount, ValidatingAdmissionPolicy, ...).
        "--enable-admission-plugins=NodeRestriction",
        # Pod-bound tokens carry the pod's node (ServiceAccountTokenPodNodeInfo, on and locked
        # since 1.32): the agents' node binding relies on it, and there is nothing to turn on.
        f"--service-account-issuer={SA_ISSUER}",
        f"--service-account-key-file={pki.sa_pub}",
        f"--service-account-signing-key-file={pki.sa_key}",
        f"--service-cluster-ip-range={SERVICE_CIDR}",
        "--allow-privileged=true",
    ]


def controller_manager_args(
    ports: Ports, pki: Pki, kubeconfig: Path, extra_controllers: tuple[str, ...] = ()
) -> list[str]:
    return [
        f"--kubeconfig={kubeconfig}",
        f"--controllers={','.join([CONTROLLERS, *extra_controllers])}",
        f"--service-account-private-key-file={pki.sa_key}",
        f"--root-ca-file={pki.ca_crt}",
        "--use-service-account-credentials=false",
        # A quota made before the controller has discovered a new CRD (every 30 s) counts that
        # CRD's objects only at the next full resync: 10 s here, not 5 min, for tests' fresh CRDs.
        "--resource-quota-sync-period=10s",
        "--leader-elect=false",
        f"--bind-address={LOOPBACK}",
        f"--secure-port={ports.controller_manager}",
        # Serve with our cert so /healthz can be checked against our CA.
        f"--tls-cert-file={pki.serving_crt}",
        f"--tls-private-key-file={pki.serving_key}",
    ]
