"""A real Kubernetes control plane (etcd, kube-apiserver, kube-controller-manager) on loopback.

Started the way controller-runtime's envtest starts one, plus a controller manager so that garbage
collection, namespace deletion and service accounts work. Everything lives in one state directory:

    <state>/kubeconfig            admin kubeconfig, context "bpfleet-local"
    <state>/controlplane.json     ports and binary directory of the current run
    <state>/pids/<name>.pid       one per process
    <state>/logs/<name>.log       stdout+stderr of each process
    <state>/pki/                  CA, serving cert, admin cert, service-account keys
    <state>/etcd/                 etcd data (wiped on every fresh start)

CLI: python -m e2e.controlplane [--state-dir DIR] {up,down,status,kubeconfig}
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import datetime
import fcntl
import ipaddress
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from types import TracebackType

import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from e2e.tools import REPO_ROOT, cache_dir

KUBE_VERSION = "v1.35.4"
ETCD_VERSION = "v3.6.16"
BUILD_SCRIPT = REPO_ROOT / "e2e" / "scripts" / "build-control-plane.sh"
CONTEXT_NAME = "bpfleet-local"
ADMIN_USER = "bpfleet-admin"
LOOPBACK = "127.0.0.1"
SERVICE_CIDR = "10.0.0.0/24"
# First address of SERVICE_CIDR: the in-cluster "kubernetes" Service, so it goes in the serving cert.
KUBERNETES_SERVICE_IP = "10.0.0.1"
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


# --- PKI -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Pki:
    """Paths of the generated credentials inside one directory."""

    dir: Path

    @property
    def ca_crt(self) -> Path:
        return self.dir / "ca.crt"

    @property
    def ca_key(self) -> Path:
        return self.dir / "ca.key"

    @property
    def serving_crt(self) -> Path:
        return self.dir / "serving.crt"

    @property
    def serving_key(self) -> Path:
        return self.dir / "serving.key"

    @property
    def admin_crt(self) -> Path:
        return self.dir / "admin.crt"

    @property
    def admin_key(self) -> Path:
        return self.dir / "admin.key"

    @property
    def sa_key(self) -> Path:
        return self.dir / "sa.key"

    @property
    def sa_pub(self) -> Path:
        return self.dir / "sa.pub"


def _new_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _write_key(path: Path, key: rsa.RSAPrivateKey) -> None:
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        )
    )
    path.chmod(0o600)


def _write_cert(path: Path, cert: x509.Certificate) -> None:
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def _cert_builder(subject: x509.Name, issuer: x509.Name, key: rsa.RSAPrivateKey) -> x509.CertificateBuilder:
    # Backdated an hour so that small clock differences never make a fresh cert "not yet valid".
    now = datetime.datetime.now(datetime.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=365))
    )


def _leaf_cert(
    ca_cert: x509.Certificate,
    ca_key: rsa.RSAPrivateKey,
    key: rsa.RSAPrivateKey,
    subject: x509.Name,
    usage: x509.ObjectIdentifier,
    sans: list[x509.GeneralName] | None = None,
) -> x509.Certificate:
    builder = (
        _cert_builder(subject, ca_cert.subject, key)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_encipherment=True,
                content_commitment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
    )
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    return builder.sign(ca_key, hashes.SHA256())


def _ca_cert(key: rsa.RSAPrivateKey) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "bpfleet-local-ca")])
    return (
        _cert_builder(name, name, key)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_encipherment=False,
                content_commitment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )


def _serving_sans() -> list[x509.GeneralName]:
    dns = [
        "localhost",
        "kubernetes",
        "kubernetes.default",
        "kubernetes.default.svc",
        "kubernetes.default.svc.cluster.local",
    ]
    ips = [LOOPBACK, KUBERNETES_SERVICE_IP]
    return [x509.DNSName(name) for name in dns] + [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ips]


def generate_pki(directory: Path) -> Pki:
    """CA, apiserver serving cert, admin client cert and service-account key pair, all fresh."""
    pki = Pki(directory)
    directory.mkdir(parents=True, exist_ok=True)
    ca_key = _new_key()
    ca = _ca_cert(ca_key)
    _write_key(pki.ca_key, ca_key)
    _write_cert(pki.ca_crt, ca)

    serving_key = _new_key()
    serving_subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "kube-apiserver")])
    serving = _leaf_cert(
        ca, ca_key, serving_key, serving_subject, ExtendedKeyUsageOID.SERVER_AUTH, _serving_sans()
    )
    _write_key(pki.serving_key, serving_key)
    _write_cert(pki.serving_crt, serving)

    # O=system:masters is bound to cluster-admin by the apiserver itself, no RBAC objects needed.
    admin_key = _new_key()
    admin_subject = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "system:masters"),
            x509.NameAttribute(NameOID.COMMON_NAME, ADMIN_USER),
        ]
    )
    admin = _leaf_cert(ca, ca_key, admin_key, admin_subject, ExtendedKeyUsageOID.CLIENT_AUTH)
    _write_key(pki.admin_key, admin_key)
    _write_cert(pki.admin_crt, admin)

    sa_key = _new_key()
    _write_key(pki.sa_key, sa_key)
    pki.sa_pub.write_bytes(
        sa_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return pki


def issue_client_cert(pki: Pki, name: str, common_name: str, organization: str) -> tuple[Path, Path]:
    """A client certificate and key signed by the control plane's CA, as <pki>/<name>.crt/.key: a
    kubelet's is CN=system:node:<node>, O=system:nodes (the Node authorizer's identity)."""
    ca = x509.load_pem_x509_certificate(pki.ca_crt.read_bytes())
    ca_key = serialization.load_pem_private_key(pki.ca_key.read_bytes(), password=None)
    assert isinstance(ca_key, rsa.RSAPrivateKey)
    key = _new_key()
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, organization),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )
    crt_path, key_path = pki.dir / f"{name}.crt", pki.dir / f"{name}.key"
    _write_key(key_path, key)
    _write_cert(crt_path, _leaf_cert(ca, ca_key, key, subject, ExtendedKeyUsageOID.CLIENT_AUTH))
    return crt_path, key_path


def write_kubeconfig(
    path: Path, server: str, pki: Pki, client: tuple[Path, Path] | None = None, user: str = ADMIN_USER
) -> None:
    """Admin kubeconfig (or one of `client`'s certificate and key) with embedded credentials, so it
    can be copied anywhere."""
    client_crt, client_key = client or (pki.admin_crt, pki.admin_key)

    def b64(file: Path) -> str:
        return base64.b64encode(file.read_bytes()).decode()

    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": CONTEXT_NAME,
                "cluster": {"server": server, "certificate-authority-data": b64(pki.ca_crt)},
            }
        ],
        "users": [
            {
                "name": user,
                "user": {
                    "client-certificate-data": b64(client_crt),
                    "client-key-data": b64(client_key),
                },
            }
        ],
        "contexts": [{"name": CONTEXT_NAME, "context": {"cluster": CONTEXT_NAME, "user": user}}],
        "current-context": CONTEXT_NAME,
        "preferences": {},
    }
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    path.chmod(0o600)


# --- processes -------------------------------------------------------------------------------------


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


def _proc_state(pid: int) -> str | None:
    """Single-letter state from /proc/<pid>/stat, None when the pid does not exist."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    # The command name is in parentheses and may contain spaces: the state follows the last ')'.
    return stat.rpartition(")")[2].split()[0]


def _proc_cmdline(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except (FileNotFoundError, ProcessLookupError):
        return []


def _tail(path: Path, lines: int = 25) -> str:
    if not path.exists():
        return "(no log)"
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


@contextlib.contextmanager
def running_control_plane(state_dir: Path) -> Iterator[ControlPlane]:
    """A control plane started in `state_dir` for the length of the block, stopped after it whatever
    happens (tests' fixtures)."""
    plane = ControlPlane(state_dir=state_dir)
    plane.start()
    try:
        yield plane
    finally:
        plane.stop()


class ControlPlane:
    """etcd + kube-apiserver + kube-controller-manager on 127.0.0.1, owned by one state directory.

    As a context manager it starts on entry and, on exit, stops only what this instance started:
    a control plane that was already running (e.g. from `python -m e2e.controlplane up`) is reused
    and left running.
    """

    def __init__(
        self,
        state_dir: Path | str | None = None,
        bin_dir: Path | None = None,
        extra_controllers: tuple[str, ...] = (),
    ) -> None:
        self.state_dir = Path(state_dir or default_state_dir()).expanduser().resolve()
        self._bin_dir = bin_dir
        # A cluster with a real node also runs workloads: deployments, replica sets, daemon sets.
        self._controllers = ",".join([CONTROLLERS, *extra_controllers])
        self._procs: dict[str, subprocess.Popen[bytes]] = {}
        self._owns_processes = False

    # -- paths and properties

    @property
    def kubeconfig(self) -> Path:
        return self.state_dir / "kubeconfig"

    @property
    def server_url(self) -> str:
        return f"https://{LOOPBACK}:{self._run_info().ports.apiserver}"

    @property
    def pki(self) -> Pki:
        return Pki(self.state_dir / "pki")

    def log_path(self, name: str) -> Path:
        return self.state_dir / "logs" / f"{name}.log"

    def _pid_path(self, name: str) -> Path:
        return self.state_dir / "pids" / f"{name}.pid"

    def _run_info_path(self) -> Path:
        return self.state_dir / "controlplane.json"

    def _run_info(self) -> RunInfo:
        path = self._run_info_path()
        if not path.exists():
            raise RuntimeError(f"no control plane has been started from {self.state_dir}")
        return RunInfo.load(path)

    # -- process bookkeeping

    def pids(self) -> dict[str, int]:
        """Recorded pids by component (only those with a pid file)."""
        found = {}
        for name in COMPONENTS:
            with contextlib.suppress(FileNotFoundError, ValueError):
                found[name] = int(self._pid_path(name).read_text().strip())
        return found

    def process_alive(self, name: str, pid: int) -> bool:
        """Whether pid is still the named component of this state dir (not a zombie, not a reused pid)."""
        proc = self._procs.get(name)
        if proc is not None and proc.pid == pid:
            return proc.poll() is None  # also reaps our own exited children
        if _proc_state(pid) in (None, "Z", "X"):
            return False
        # Guard against pid reuse: the process must be this binary working on this state dir.
        cmdline = _proc_cmdline(pid)
        return (
            bool(cmdline)
            and Path(cmdline[0]).name == name
            and any(str(self.state_dir) in arg for arg in cmdline[1:])
        )

    def is_running(self) -> bool:
        """All three processes recorded in the state dir are alive (says nothing about health)."""
        pids = self.pids()
        return len(pids) == len(COMPONENTS) and all(self.process_alive(n, p) for n, p in pids.items())

    def _dead_components(self) -> list[str]:
        pids = self.pids()
        return [name for name in COMPONENTS if name in pids and not self.process_alive(name, pids[name])]

    # -- health

    def _ssl_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=str(self.pki.ca_crt))
        context.load_cert_chain(str(self.pki.admin_crt), str(self.pki.admin_key))
        return context

    def _http_status(self, url: str, context: ssl.SSLContext | None = None) -> int | None:
        """HTTP status of a GET, None when nothing answers (yet)."""
        try:
            with urllib.request.urlopen(url, timeout=3, context=context) as response:
                return int(response.status)
        except urllib.error.HTTPError as error:
            return error.code
        except (urllib.error.URLError, OSError):
            return None

    def _etcd_healthy(self) -> bool:
        return self._http_status(f"http://{LOOPBACK}:{self._run_info().ports.etcd_client}/health") == 200

    def _apiserver_ready(self) -> bool:
        return self._http_status(f"{self.server_url}/readyz", self._ssl_context()) == 200

    def _controller_manager_healthy(self) -> bool:
        url = f"https://{LOOPBACK}:{self._run_info().ports.controller_manager}/healthz"
        return self._http_status(url, self._ssl_context()) == 200

    def _default_service_account_exists(self) -> bool:
        # Pods are rejected by ServiceAccount admission until the controller creates this one.
        url = f"{self.server_url}/api/v1/namespaces/default/serviceaccounts/default"
        return self._http_status(url, self._ssl_context()) == 200

    def healthy(self) -> bool:
        """Processes alive and the apiserver answers /readyz."""
        try:
            return self.is_running() and self._apiserver_ready()
        except (RuntimeError, OSError, ssl.SSLError):
            return False

    def _poll(self, what: str, check: Callable[[], bool], deadline: float) -> None:
        started = time.monotonic()
        while not check():
            dead = self._dead_components()
            if dead:
                name = dead[0]
                raise RuntimeError(
                    f"{name} exited while waiting for {what}; last log lines of "
                    f"{self.log_path(name)}:\n{_tail(self.log_path(name))}"
                )
            if time.monotonic() > deadline:
                raise TimeoutError(f"timed out waiting for {what}; logs are in {self.state_dir / 'logs'}")
            time.sleep(0.25)
        log(f"{what} ok", seconds=f"{time.monotonic() - started:.1f}")

    def wait_ready(self, timeout: float = 90.0) -> None:
        """Blocks until the apiserver is ready, the controller manager is healthy and pods can be created."""
        deadline = time.monotonic() + timeout
        self._poll("kube-apiserver /readyz", self._apiserver_ready, deadline)
        self._poll("kube-controller-manager /healthz", self._controller_manager_healthy, deadline)
        self._poll("default service account", self._default_service_account_exists, deadline)

    # -- start / stop

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """Serialises start/stop across processes sharing this state dir."""
        self.state_dir.mkdir(parents=True, exist_ok=True)
        with open(self.state_dir / ".lock", "w") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def start(self, timeout: float = 120.0) -> None:
        """Reuses a healthy control plane from this state dir, else cleans up and starts a fresh one."""
        with self._locked():
            if self.healthy():
                log(
                    "reusing running control plane",
                    state=self.state_dir,
                    server=self.server_url,
                    pids=",".join(str(p) for p in self.pids().values()),
                )
                return
            self._stop_unlocked()
            try:
                self._start_fresh(timeout)
            except BaseException:
                log("start failed; stopping what was started", logs=self.state_dir / "logs")
                self._stop_unlocked()
                raise

    def _start_fresh(self, timeout: float) -> None:
        started = time.monotonic()
        deadline = started + timeout
        bin_dir = self._bin_dir or build_binaries()
        for sub in ("etcd", "pki"):
            shutil.rmtree(self.state_dir / sub, ignore_errors=True)
        for sub in ("logs", "pids", "etcd"):
            (self.state_dir / sub).mkdir(parents=True, exist_ok=True)
        (self.state_dir / "etcd").chmod(0o700)  # etcd refuses data dirs readable by others

        ports = Ports(*free_ports(4))
        RunInfo(bin_dir=str(bin_dir), ports=ports).save(self._run_info_path())
        log("generating certificates", dir=self.pki.dir)
        pki = generate_pki(self.pki.dir)
        write_kubeconfig(self.kubeconfig, self.server_url, pki)
        controller_kubeconfig = pki.dir / "controller-manager.kubeconfig"
        write_kubeconfig(controller_kubeconfig, self.server_url, pki)

        log(f"starting etcd on {LOOPBACK}:{ports.etcd_client}")
        self._spawn("etcd", bin_dir, self._etcd_args(ports))
        self._poll("etcd /health", self._etcd_healthy, deadline)

        log(f"starting kube-apiserver on {LOOPBACK}:{ports.apiserver}")
        self._spawn("kube-apiserver", bin_dir, self._apiserver_args(ports, pki))
        self._poll("kube-apiserver /readyz", self._apiserver_ready, deadline)

        log(f"starting kube-controller-manager on {LOOPBACK}:{ports.controller_manager}")
        self._spawn(
            "kube-controller-manager",
            bin_dir,
            self._controller_manager_args(ports, pki, controller_kubeconfig),
        )
        self.wait_ready(max(deadline - time.monotonic(), 1.0))
        log(
            "control plane ready",
            server=self.server_url,
            kubeconfig=self.kubeconfig,
            seconds=f"{time.monotonic() - started:.1f}",
        )

    # -- one component at a time (fault tests)

    def stop_component(self, name: str, timeout: float = 15.0, crash: bool = False) -> None:
        """Stops one component of a running control plane; its data and certificates stay. `crash`
        SIGKILLs it: no graceful shutdown (a kube-apiserver with open watches drains them >15 s)."""
        with self._locked():
            pid = self.pids().get(name)
            if pid is not None and self.process_alive(name, pid):
                if crash:
                    log(f"killing {name}", pid=pid)
                    self._signal_group(pid, signal.SIGKILL)
                    if not self._wait_exit(name, pid, 5.0):
                        raise RuntimeError(f"{name} (pid {pid}) survived SIGKILL")
                else:
                    self._terminate(name, pid, timeout)
            self._pid_path(name).unlink(missing_ok=True)
            self._procs.pop(name, None)

    def start_component(self, name: str, timeout: float = 60.0) -> None:
        """Starts a stopped component again with the ports, certificates and data of this run, and
        waits until it serves."""
        with self._locked():
            info = self._run_info()
            pki = self.pki
            args = {
                "etcd": lambda: self._etcd_args(info.ports),
                "kube-apiserver": lambda: self._apiserver_args(info.ports, pki),
                "kube-controller-manager": lambda: self._controller_manager_args(
                    info.ports, pki, pki.dir / "controller-manager.kubeconfig"
                ),
            }[name]()
            self._spawn(name, Path(info.bin_dir), args)
            deadline = time.monotonic() + timeout
            check = {
                "etcd": self._etcd_healthy,
                "kube-apiserver": self._apiserver_ready,
                "kube-controller-manager": self._controller_manager_healthy,
            }[name]
            self._poll(f"{name} serving again", check, deadline)

    def _spawn(self, name: str, bin_dir: Path, args: list[str]) -> None:
        log_path = self.log_path(name)
        if log_path.exists():
            log_path.replace(log_path.with_suffix(".log.1"))  # keep the previous run for post-mortems
        with open(log_path, "wb") as log_file:
            # Own session: survives the CLI that started it, and stop() can signal the whole group.
            proc = subprocess.Popen(
                [str(bin_dir / name), *args],
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                cwd=self.state_dir,
            )
        self._procs[name] = proc
        self._owns_processes = True
        self._pid_path(name).write_text(f"{proc.pid}\n")
        log(f"{name} started", pid=proc.pid, log=log_path)

    def _etcd_args(self, ports: Ports) -> list[str]:
        client = f"http://{LOOPBACK}:{ports.etcd_client}"
        peer = f"http://{LOOPBACK}:{ports.etcd_peer}"
        return [
            "--name=bpfleet",
            f"--data-dir={self.state_dir / 'etcd'}",
            f"--listen-client-urls={client}",
            f"--advertise-client-urls={client}",
            f"--listen-peer-urls={peer}",
            f"--initial-advertise-peer-urls={peer}",
            f"--initial-cluster=bpfleet={peer}",
            "--unsafe-no-fsync=true",  # throwaway data: durability only costs time
        ]

    def _apiserver_args(self, ports: Ports, pki: Pki) -> list[str]:
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

    def _controller_manager_args(self, ports: Ports, pki: Pki, kubeconfig: Path) -> list[str]:
        return [
            f"--kubeconfig={kubeconfig}",
            f"--controllers={self._controllers}",
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

    def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM each process group (reverse start order), SIGKILL after timeout, remove pid files."""
        with self._locked():
            self._stop_unlocked(timeout)

    def _stop_unlocked(self, timeout: float = 15.0) -> None:
        pids = self.pids()
        for name in reversed(COMPONENTS):
            pid = pids.get(name)
            if pid is not None and self.process_alive(name, pid):
                self._terminate(name, pid, timeout)
            self._pid_path(name).unlink(missing_ok=True)
            self._procs.pop(name, None)
        self._owns_processes = False

    def _terminate(self, name: str, pid: int, timeout: float) -> None:
        started = time.monotonic()
        log(f"stopping {name}", pid=pid)
        self._signal_group(pid, signal.SIGTERM)
        if not self._wait_exit(name, pid, timeout):
            log(f"{name} ignored SIGTERM; sending SIGKILL", pid=pid, waited=f"{timeout:.0f}s")
            self._signal_group(pid, signal.SIGKILL)
            if not self._wait_exit(name, pid, 5.0):
                raise RuntimeError(f"{name} (pid {pid}) survived SIGKILL")
        log(f"{name} stopped", pid=pid, seconds=f"{time.monotonic() - started:.1f}")

    @staticmethod
    def _signal_group(pid: int, sig: signal.Signals) -> None:
        # Each component leads its own session, so its pid is also its process-group id.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, sig)

    def _wait_exit(self, name: str, pid: int, timeout: float) -> bool:
        proc = self._procs.get(name)
        if proc is not None and proc.pid == pid:
            try:
                proc.wait(timeout)
                return True
            except subprocess.TimeoutExpired:
                return False
        # Not our child (started by another process): poll /proc instead of waitpid.
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.process_alive(name, pid):
                return True
            time.sleep(0.1)
        return not self.process_alive(name, pid)

    # -- context manager

    def __enter__(self) -> ControlPlane:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self._owns_processes:
            self.stop()


# --- CLI -------------------------------------------------------------------------------------------


def _cmd_up(plane: ControlPlane) -> int:
    plane.start()
    plane.wait_ready()
    print(f"# kubeconfig: {plane.kubeconfig}")
    print(f"export KUBECONFIG={plane.kubeconfig}")
    return 0


def _cmd_down(plane: ControlPlane) -> int:
    plane.stop()
    log("control plane stopped", state=plane.state_dir)
    return 0


def _cmd_status(plane: ControlPlane) -> int:
    healthy = plane.healthy()
    pids = plane.pids()
    alive = {name: pid for name, pid in pids.items() if plane.process_alive(name, pid)}
    state = "running" if healthy else ("degraded" if alive else "stopped")
    print(f"state:   {state}  ({plane.state_dir})")
    for name in COMPONENTS:
        print(f"  {name:<24} {f'pid {alive[name]}' if name in alive else 'not running'}")
    if healthy:
        print(f"server:  {plane.server_url}")
        print(f"kubeconfig: {plane.kubeconfig}")
    return 0 if healthy else 1


def _cmd_kubeconfig(plane: ControlPlane) -> int:
    print(plane.kubeconfig)
    return 0 if plane.kubeconfig.exists() else 1


COMMANDS: dict[str, Callable[[ControlPlane], int]] = {
    "up": _cmd_up,
    "down": _cmd_down,
    "status": _cmd_status,
    "kubeconfig": _cmd_kubeconfig,
}


def main(argv: list[str] | None = None) -> int:
    state_option = argparse.ArgumentParser(add_help=False)
    # SUPPRESS lets --state-dir sit before or after the subcommand without one erasing the other.
    state_option.add_argument(
        "--state-dir",
        type=Path,
        default=argparse.SUPPRESS,
        help="state directory (default $BPFLEET_STATE_DIR, else ~/.cache/bpfleet/run/default)",
    )
    parser = argparse.ArgumentParser(
        prog="python -m e2e.controlplane",
        parents=[state_option],
        description="Local Kubernetes control plane on 127.0.0.1.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("up", parents=[state_option], help="start (or reuse) and wait until ready")
    sub.add_parser("down", parents=[state_option], help="stop the processes")
    sub.add_parser("status", parents=[state_option], help="show processes; exit 0 only when healthy")
    sub.add_parser("kubeconfig", parents=[state_option], help="print the kubeconfig path")
    args = parser.parse_args(argv)
    plane = ControlPlane(state_dir=getattr(args, "state_dir", None))
    return COMMANDS[args.command](plane)


if __name__ == "__main__":
    sys.exit(main())
