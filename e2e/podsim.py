"""A pod simulator that stands in for kubelet and the container runtime on this host.

There is no kubelet here, yet the agent needs pods that are real to both sides it looks at: Pod and
Node objects in the API (bound to a node, Running, with a QoS class and container ids) and, in the
kernel, the cgroup v2 directories kubelet would create with a live process inside. PodSimulator
makes both. Processes are moved into their container cgroup in the child before exec, so nothing
they do is ever attributed to another cgroup.

Cgroup layouts, relative to the kubelet cgroup root (on a hybrid host /sys/fs/cgroup/unified):

    systemd   kubepods.slice/kubepods-<qos>.slice/kubepods-<qos>-pod<uid_>.slice/cri-containerd-<id>.scope
              kubepods.slice/kubepods-pod<uid_>.slice/...                      (Guaranteed)
    cgroupfs  kubepods/<qos>/pod<uid>/<id>
              kubepods/pod<uid>/<id>                                           (Guaranteed)

CLI (the process outlives the command; remove it later with cleanup-tree):
    python -m e2e.podsim --node N --cgroup-root PATH [--driver systemd|cgroupfs] [--kubeconfig F] \
        create-pod --namespace NS --name P --label k=v ...
    python -m e2e.podsim --node N --cgroup-root PATH ensure-node --label k=v ...
    python -m e2e.podsim --node N --cgroup-root PATH cleanup-tree
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import json
import logging
import os
import platform
import re
import secrets
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from types import TracebackType
from typing import Any, Literal

import kubernetes.client
from kubernetes.client.exceptions import ApiException

from e2e import podnet
from e2e.podnet import PodNetwork

CgroupDriver = Literal["systemd", "cgroupfs"]
QosClass = Literal["Guaranteed", "Burstable", "BestEffort"]

CONTAINER_NAME = "app"
CONTAINER_IMAGE = "registry.invalid/sim:1"
CONTAINER_ID_SCHEME = "sim"
POD_IP = "127.0.0.1"
NODE_LEASE_NAMESPACE = "kube-node-lease"
NODE_LEASE_SECONDS = 40
# Short: cleanup must not hang on an apiserver that is already gone.
CLEANUP_REQUEST_TIMEOUT = 5.0

MERGE_PATCH = "application/merge-patch+json"
STRATEGIC_MERGE_PATCH = "application/strategic-merge-patch+json"
JSON_PATCH = "application/json-patch+json"

_QOS_BY_LOWER: dict[str, QosClass] = {
    "guaranteed": "Guaranteed",
    "burstable": "Burstable",
    "besteffort": "BestEffort",
}
# Pod UIDs are UUIDs and container ids hex; anything else could escape the cgroup root.
_UID_RE = re.compile(r"[A-Za-z0-9-]+")
_CONTAINER_ID_RE = re.compile(r"[A-Za-z0-9]+")
# Requests that make the apiserver compute the QoS class we claim in status (it rejects a mismatch).
_SIM_RESOURCES = {"cpu": "10m", "memory": "16Mi"}

log = logging.getLogger("bpfleet.e2e.podsim")


def _event(event: str, level: int = logging.INFO, **fields: object) -> None:
    """One `event k=v ...` line; the fields also ride along on the record for structured handlers."""
    text = " ".join(f"{key}={value}" for key, value in fields.items())
    log.log(level, "%s %s", event, text, extra={"event": event, "fields": fields})


# --- pure path computation ---------------------------------------------------------------------------


def normalize_qos(qos: str) -> QosClass:
    """Accepts any casing of the three QoS class names and returns the API spelling."""
    try:
        return _QOS_BY_LOWER[qos.lower()]
    except KeyError:
        raise ValueError(f"unknown QoS class {qos!r}; expected Guaranteed, Burstable or BestEffort") from None


def pod_cgroup_relpath(uid: str, qos: str, driver: CgroupDriver) -> PurePosixPath:
    """The pod-level cgroup kubelet creates for a pod, relative to the kubelet cgroup root."""
    if not _UID_RE.fullmatch(uid):
        raise ValueError(f"invalid pod uid {uid!r}")
    qos_class = normalize_qos(qos).lower()
    if driver == "systemd":
        # systemd treats '-' in unit names as hierarchy separators, so kubelet escapes it as '_'.
        escaped = uid.replace("-", "_")
        if qos_class == "guaranteed":
            return PurePosixPath("kubepods.slice", f"kubepods-pod{escaped}.slice")
        qos_slice = f"kubepods-{qos_class}.slice"
        return PurePosixPath("kubepods.slice", qos_slice, f"kubepods-{qos_class}-pod{escaped}.slice")
    if driver == "cgroupfs":
        if qos_class == "guaranteed":
            return PurePosixPath("kubepods", f"pod{uid}")
        return PurePosixPath("kubepods", qos_class, f"pod{uid}")
    raise ValueError(f"unknown cgroup driver {driver!r}; expected systemd or cgroupfs")


def container_cgroup_name(container_id: str, driver: CgroupDriver) -> str:
    """Directory name of a container's cgroup inside its pod cgroup (containerd's naming)."""
    if not _CONTAINER_ID_RE.fullmatch(container_id):
        raise ValueError(f"invalid container id {container_id!r}")
    if driver == "systemd":
        return f"cri-containerd-{container_id}.scope"
    if driver == "cgroupfs":
        return container_id
    raise ValueError(f"unknown cgroup driver {driver!r}; expected systemd or cgroupfs")


def container_cgroup_relpath(uid: str, qos: str, driver: CgroupDriver, container_id: str) -> PurePosixPath:
    """The container cgroup, relative to the kubelet cgroup root."""
    return pod_cgroup_relpath(uid, qos, driver) / container_cgroup_name(container_id, driver)


def new_container_id() -> str:
    """64 hex digits, the shape of a containerd container id."""
    return secrets.token_hex(32)


# --- cgroup v2 primitives ------------------------------------------------------------------------------


def find_cgroup2_mount(mountinfo: Path = Path("/proc/self/mountinfo")) -> Path:
    """Mount point of the cgroup v2 hierarchy: /sys/fs/cgroup (pure v2) or /sys/fs/cgroup/unified (hybrid)."""
    for line in mountinfo.read_text().splitlines():
        # Fields after " - " are: fstype, source, super options.
        before, _, after = line.partition(" - ")
        if after.split(" ", 1)[0] == "cgroup2":
            return Path(before.split()[4])
    raise RuntimeError("no cgroup2 filesystem is mounted")


def is_cgroup2_dir(path: Path) -> bool:
    # cgroup.controllers exists only in v2 hierarchies, cgroup.procs in every cgroup directory.
    return (path / "cgroup.controllers").is_file() and (path / "cgroup.procs").is_file()


def process_cgroup(pid: int) -> str:
    """The v2 cgroup of a process as the kernel reports it ('/a/b', relative to the v2 mount)."""
    for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines():
        if line.startswith("0::"):
            return line[3:]
    raise RuntimeError(f"process {pid} has no cgroup v2 membership")


def cgroup_pids(path: Path) -> list[int]:
    """Pids directly in one cgroup (not its descendants); empty when the cgroup is gone."""
    try:
        return [int(line) for line in (path / "cgroup.procs").read_text().split()]
    except FileNotFoundError:
        return []


def cgroup_populated(path: Path) -> bool:
    """Whether any live process remains in the cgroup or below it."""
    try:
        events = (path / "cgroup.events").read_text()
    except FileNotFoundError:
        return False
    return "populated 1" in events


def _kill_cgroup(path: Path) -> None:
    """SIGKILLs every process in the subtree: cgroup.kill (5.14+) is atomic against forks."""
    kill_file = path / "cgroup.kill"
    try:
        kill_file.write_text("1")
        return
    except FileNotFoundError:
        if not path.exists():
            return
    # Older kernels: signal each process, deepest cgroups first.
    for directory, _, _ in os.walk(path, topdown=False):
        for pid in cgroup_pids(Path(directory)):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def _wait_unpopulated(path: Path, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while cgroup_populated(path):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def _rmdir_cgroup(path: Path, timeout: float = 5.0) -> bool:
    """rmdir with a short retry: a killed task can hold the cgroup busy for a moment after exit."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            path.rmdir()
            return True
        except FileNotFoundError:
            return True
        except OSError as exc:
            if exc.errno not in (errno.EBUSY, errno.ENOTEMPTY) or time.monotonic() > deadline:
                _event(
                    "cgroup.rmdir_failed",
                    logging.WARNING,
                    path=path,
                    error=exc.strerror,
                    procs=",".join(map(str, cgroup_pids(path))) or "-",
                )
                return False
            time.sleep(0.02)


def _ensure_outside(root: Path) -> None:
    """Refuses to kill a tree that holds the calling process: cgroup.kill would kill us too."""
    mount = find_cgroup2_mount()
    own = mount / process_cgroup(os.getpid()).lstrip("/")
    if own == root or root in own.parents:
        raise RuntimeError(f"refusing to clean {root}: this process (pid {os.getpid()}) lives in {own}")


def cleanup_cgroup_tree(root: Path, timeout: float = 10.0) -> bool:
    """Kills every process in a cgroup v2 tree and removes all its cgroups bottom-up, root included.

    For leftovers of crashed runs. Returns True when nothing is left.
    """
    root = Path(root)
    if not root.exists():
        return True
    if not is_cgroup2_dir(root):
        raise ValueError(f"{root} is not a cgroup v2 directory")
    _ensure_outside(root)
    _kill_cgroup(root)
    if not _wait_unpopulated(root, timeout):
        _event("cgroup.tree_still_populated", logging.WARNING, root=root)
    removed = 0
    for directory, _, _ in os.walk(root, topdown=False):
        removed += _rmdir_cgroup(Path(directory))
    _event("cgroup.tree_removed", root=root, cgroups=removed)
    return not root.exists()


def _join_cgroup(procs_fd: int) -> Callable[[], None]:
    """A preexec_fn that moves the forked child into the cgroup whose cgroup.procs is procs_fd.

    The fd is opened by the parent: the child then does a single write() between fork and exec,
    which keeps the preexec_fn as close to async-signal-safe as Python allows.
    """

    def join() -> None:
        os.write(procs_fd, b"0")  # pid 0 means "the writing process" in cgroup v2

    return join


@contextlib.contextmanager
def _procs_fd(cgroup: Path) -> Iterator[int]:
    # O_CLOEXEC: the fd must survive until preexec_fn runs but never leak into the exec'd program.
    try:
        fd = os.open(cgroup / "cgroup.procs", os.O_WRONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise RuntimeError(f"cgroup {cgroup} does not exist (pod deleted?)") from None
    try:
        yield fd
    finally:
        os.close(fd)


def spawn_in_cgroup(argv: Sequence[str], cgroup: Path, **popen_kwargs: Any) -> subprocess.Popen[Any]:
    """Popen whose child joins `cgroup` before exec, so it never runs anywhere else."""
    with _procs_fd(cgroup) as fd:
        return subprocess.Popen(list(argv), preexec_fn=_join_cgroup(fd), **popen_kwargs)


def run_in_cgroup(
    argv: Sequence[str], cgroup: Path, timeout: float, input: str | None = None
) -> subprocess.CompletedProcess[str]:
    """subprocess.run in `cgroup`: output captured as text, never raises on a non-zero exit."""
    with _procs_fd(cgroup) as fd:
        return subprocess.run(
            list(argv),
            preexec_fn=_join_cgroup(fd),
            input=input,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )


# --- scripts run inside a pod's cgroup -------------------------------------------------------------------

# Prints 0 or the errno of the failed connect(); a timeout is reported as ETIMEDOUT.
_CONNECT_TCP_SCRIPT = """
import errno, socket, sys
host, port, timeout = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
try:
    with socket.create_connection((host, port), timeout=timeout):
        code = 0
except TimeoutError as exc:
    code = exc.errno or errno.ETIMEDOUT
except OSError as exc:
    code = exc.errno or -1
print(code)
"""

# Prints {"sent": n, "errors": {errno: count}}: a drop by a cgroup egress program shows up as EPERM.
_SEND_UDP_SCRIPT = """
import json, socket, sys
host, port, count, size = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
family, _, _, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM)[0]
payload = b"x" * size
sent, errors = 0, {}
with socket.socket(family, socket.SOCK_DGRAM) as sock:
    for _ in range(count):
        try:
            sock.sendto(payload, address)
            sent += 1
        except OSError as exc:
            errors[exc.errno] = errors.get(exc.errno, 0) + 1
print(json.dumps({"sent": sent, "errors": errors}))
"""


PROBE_TARGET = "/bin/target"  # in a root made by build_probe_root
PROBE_SYMBOL = "bpfleet_probe_target"  # the function `/bin/target call N` calls N times


def build_probe_root(root: Path) -> Path:
    """Makes `root` a container root holding one statically linked program, /bin/target
    (e2e/probe_target.c), to probe with uprobes. Returns root."""
    target = root / PROBE_TARGET.lstrip("/")
    target.parent.mkdir(parents=True, exist_ok=True)
    source = Path(__file__).with_name("probe_target.c")
    subprocess.run(["gcc", "-O2", "-static", "-o", str(target), str(source)], check=True, timeout=120)
    return root


def wait_chrooted(pid: int, root: Path, timeout: float = 5.0) -> None:
    """Waits until `chroot` has entered `root` in process pid: Popen returns once chroot(8) runs,
    a moment before /proc/<pid>/root is the new root."""
    deadline = time.monotonic() + timeout
    while os.readlink(f"/proc/{pid}/root") != str(root.resolve()):
        if time.monotonic() > deadline:
            raise RuntimeError(f"process {pid} did not enter {root} within {timeout}s")
        time.sleep(0.005)


def _python_argv(script: str, *args: object) -> list[str]:
    # -I -S: isolated and without site-packages, so the helper starts fast and sees only the stdlib.
    return [sys.executable, "-I", "-S", "-c", script, *(str(arg) for arg in args)]


@dataclass(frozen=True)
class UdpResult:
    """What send_udp saw: datagrams the kernel accepted, and failed sends counted by errno."""

    sent: int
    errors: dict[int, int]


@dataclass
class SimPod:
    """A simulated pod: its API identity, its cgroups and the pid of its container's process."""

    name: str
    namespace: str
    uid: str
    qos: QosClass
    container_id: str
    pod_cgroup: Path
    container_cgroup: Path
    pid: int
    labels: dict[str, str] = field(default_factory=dict)
    # Its own network namespace and veth pair, when created with network=True; else the host's.
    network: PodNetwork | None = None
    # The container's root directory (its processes run chrooted into it), or None for the host's.
    root: Path | None = None
    _proc: subprocess.Popen[bytes] | None = field(default=None, repr=False, compare=False)

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"

    def is_running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def describe(self) -> dict[str, Any]:
        """JSON-friendly summary (for logs and the CLI)."""
        return {
            "name": self.name,
            "namespace": self.namespace,
            "uid": self.uid,
            "qos": self.qos,
            "container_id": self.container_id,
            "pod_cgroup": str(self.pod_cgroup),
            "container_cgroup": str(self.container_cgroup),
            "pid": self.pid,
            "labels": dict(self.labels),
        }

    def run(
        self, argv: Sequence[str], timeout: float = 30.0, input: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        """Runs a command inside the pod's container cgroup (and network namespace, if it has one),
        so its traffic is the pod's traffic; chrooted into the pod's root, if it has one."""
        if self.root is not None:
            argv = ["chroot", str(self.root), *argv]
        if self.network is not None:
            argv = self.network.exec_argv(argv)
        return run_in_cgroup(argv, self.container_cgroup, timeout, input)

    def connect_tcp(self, host: str, port: int, timeout: float = 2.0) -> int:
        """Opens a TCP connection from the pod: 0 on success, else the errno connect() failed with."""
        result = self.run(_python_argv(_CONNECT_TCP_SCRIPT, host, port, timeout), timeout=timeout + 15)
        return int(self._script_output(result, "connect_tcp"))

    def send_udp(self, host: str, port: int, count: int, size: int = 64) -> UdpResult:
        """Sends `count` datagrams of `size` bytes from the pod."""
        result = self.run(_python_argv(_SEND_UDP_SCRIPT, host, port, count, size), timeout=30 + count / 100)
        data = json.loads(self._script_output(result, "send_udp"))
        return UdpResult(sent=data["sent"], errors={int(k): v for k, v in data["errors"].items()})

    def _script_output(self, result: subprocess.CompletedProcess[str], what: str) -> str:
        if result.returncode != 0:
            detail = result.stderr.strip()
            raise RuntimeError(f"{what} in pod {self.key} exited {result.returncode}: {detail}")
        return result.stdout.strip()


# --- API objects ---------------------------------------------------------------------------------------


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _now_micro() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _kube_arch() -> str:
    machine = platform.machine()
    return {"x86_64": "amd64", "aarch64": "arm64"}.get(machine, machine)


def _os_image() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/etc/os-release").read_text().splitlines():
            if line.startswith("PRETTY_NAME="):
                return line.partition("=")[2].strip('"')
    return "Linux"


def _container_resources(qos: QosClass) -> kubernetes.client.V1ResourceRequirements | None:
    if qos == "BestEffort":
        return None
    if qos == "Burstable":
        return kubernetes.client.V1ResourceRequirements(requests=dict(_SIM_RESOURCES))
    return kubernetes.client.V1ResourceRequirements(
        requests=dict(_SIM_RESOURCES), limits=dict(_SIM_RESOURCES)
    )


def _pod_manifest(
    namespace: str, name: str, labels: Mapping[str, str], node_name: str, qos: QosClass
) -> kubernetes.client.V1Pod:
    container = kubernetes.client.V1Container(
        name=CONTAINER_NAME, image=CONTAINER_IMAGE, resources=_container_resources(qos)
    )
    # Without a node lifecycle heartbeat the node may turn NotReady; never let that evict the pod.
    tolerations = [
        kubernetes.client.V1Toleration(key=key, operator="Exists", effect="NoExecute")
        for key in ("node.kubernetes.io/not-ready", "node.kubernetes.io/unreachable")
    ]
    return kubernetes.client.V1Pod(
        api_version="v1",
        kind="Pod",
        metadata=kubernetes.client.V1ObjectMeta(name=name, namespace=namespace, labels=dict(labels)),
        spec=kubernetes.client.V1PodSpec(
            node_name=node_name,
            containers=[container],
            tolerations=tolerations,
            automount_service_account_token=False,
            termination_grace_period_seconds=0,
        ),
    )


def _pod_status(qos: QosClass, container_id: str) -> dict[str, Any]:
    """The status kubelet would report for a pod whose only container has started and is ready."""
    now = _now()
    conditions = [
        {"type": kind, "status": "True", "lastTransitionTime": now}
        for kind in ("PodScheduled", "Initialized", "ContainersReady", "Ready")
    ]
    container_status = {
        "name": CONTAINER_NAME,
        "image": CONTAINER_IMAGE,
        "imageID": f"{CONTAINER_IMAGE.rpartition(':')[0]}@sha256:{'0' * 64}",
        "containerID": f"{CONTAINER_ID_SCHEME}://{container_id}",
        "ready": True,
        "started": True,
        "restartCount": 0,
        "state": {"running": {"startedAt": now}},
    }
    return {
        "status": {
            "phase": "Running",
            "qosClass": qos,
            "hostIP": POD_IP,
            "hostIPs": [{"ip": POD_IP}],
            "podIP": POD_IP,
            "podIPs": [{"ip": POD_IP}],
            "startTime": now,
            "conditions": conditions,
            "containerStatuses": [container_status],
        }
    }


def _node_status(node_name: str) -> dict[str, Any]:
    now = _now()
    resources = {"cpu": str(os.cpu_count() or 1), "memory": "8Gi", "pods": "110"}
    uname = os.uname()
    return {
        "status": {
            "conditions": [
                {
                    "type": "Ready",
                    "status": "True",
                    "reason": "KubeletReady",
                    "message": "bpfleet pod simulator is posting ready status",
                    "lastHeartbeatTime": now,
                    "lastTransitionTime": now,
                }
            ],
            "addresses": [
                {"type": "InternalIP", "address": POD_IP},
                {"type": "Hostname", "address": node_name},
            ],
            "capacity": resources,
            "allocatable": resources,
            "nodeInfo": {
                "machineID": "",
                "systemUUID": "",
                "bootID": "",
                "kernelVersion": uname.release,
                "osImage": _os_image(),
                "containerRuntimeVersion": f"{CONTAINER_ID_SCHEME}://podsim",
                "kubeletVersion": "v0.0.0-podsim",
                "kubeProxyVersion": "",
                "operatingSystem": "linux",
                "architecture": _kube_arch(),
            },
        }
    }


def _is_status(exc: ApiException, *codes: int) -> bool:
    return exc.status in codes


# --- the simulator -------------------------------------------------------------------------------------


class PodSimulator:
    """Plays kubelet for one node: Node and Pod objects in the API, cgroups and processes in the kernel.

    Everything it creates is tracked so that cleanup() can remove it, also after failures.
    """

    def __init__(
        self,
        api: kubernetes.client.ApiClient,
        node_name: str,
        cgroup_root: Path,
        driver: CgroupDriver = "systemd",
    ) -> None:
        if driver not in ("systemd", "cgroupfs"):
            raise ValueError(f"unknown cgroup driver {driver!r}; expected systemd or cgroupfs")
        self.api = api
        self.node_name = node_name
        self.cgroup_root = Path(cgroup_root)
        self.driver: CgroupDriver = driver
        self.core = kubernetes.client.CoreV1Api(api)
        self.coordination = kubernetes.client.CoordinationV1Api(api)
        self._lock = threading.Lock()
        self._pods: dict[str, SimPod] = {}
        self._created_dirs: list[Path] = []  # in creation order: parents before children
        self._node_ensured = False
        self._heartbeat_stop: threading.Event | None = None
        self._heartbeat_thread: threading.Thread | None = None
        existing = next(p for p in (self.cgroup_root, *self.cgroup_root.parents) if p.exists())
        if not is_cgroup2_dir(existing):
            raise ValueError(f"{self.cgroup_root} is not inside a cgroup v2 hierarchy")
        self._mkdirs(self.cgroup_root)

    # -- context manager

    def __enter__(self) -> PodSimulator:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.cleanup()

    @property
    def pods(self) -> list[SimPod]:
        with self._lock:
            return list(self._pods.values())

    # -- node

    def ensure_node(self, labels: Mapping[str, str] | None = None) -> kubernetes.client.V1Node:
        """Creates the Node (or, given labels, makes its labels exactly the defaults plus these) and
        marks it Ready through the status subresource."""
        desired = {
            "kubernetes.io/hostname": self.node_name,
            "kubernetes.io/os": "linux",
            "kubernetes.io/arch": _kube_arch(),
            **(labels or {}),
        }
        body = kubernetes.client.V1Node(
            api_version="v1",
            kind="Node",
            metadata=kubernetes.client.V1ObjectMeta(name=self.node_name, labels=desired),
        )
        try:
            self.core.create_node(body)
            _event("node.created", node=self.node_name, labels=_fmt_labels(desired))
        except ApiException as exc:
            if not _is_status(exc, 409):
                raise
            if labels is not None:
                self._replace_labels(
                    lambda patch: self.core.patch_node(self.node_name, patch, _content_type=JSON_PATCH),
                    desired,
                )
                _event("node.labels_set", node=self.node_name, labels=_fmt_labels(desired))
        self._node_ensured = True
        node = self.core.patch_node_status(
            self.node_name, _node_status(self.node_name), _content_type=STRATEGIC_MERGE_PATCH
        )
        self._renew_lease(node.metadata.uid)
        _event("node.ready", node=self.node_name)
        return node

    def heartbeat(self) -> None:
        """What kubelet does every few seconds: renew the node Lease and the Ready heartbeat time."""
        patch = {"status": {"conditions": [{"type": "Ready", "status": "True", "lastHeartbeatTime": _now()}]}}
        node = self.core.patch_node_status(self.node_name, patch, _content_type=STRATEGIC_MERGE_PATCH)
        self._renew_lease(node.metadata.uid)

    def start_heartbeat(self, interval: float = 10.0) -> None:
        """Heartbeats in a daemon thread until cleanup(); only needed when a node lifecycle
        controller runs, which would otherwise mark the node NotReady after ~40 s."""
        if self._heartbeat_thread is not None:
            return
        stop = threading.Event()

        def loop() -> None:
            while not stop.wait(interval):
                try:
                    self.heartbeat()
                except Exception as exc:  # keep beating through apiserver hiccups
                    _event("node.heartbeat_failed", logging.WARNING, node=self.node_name, error=exc)

        self._heartbeat_stop = stop
        self._heartbeat_thread = threading.Thread(
            target=loop, name=f"podsim-heartbeat-{self.node_name}", daemon=True
        )
        self._heartbeat_thread.start()

    def stop_heartbeat(self) -> None:
        if self._heartbeat_stop is not None and self._heartbeat_thread is not None:
            self._heartbeat_stop.set()
            self._heartbeat_thread.join(timeout=30)
        self._heartbeat_stop = self._heartbeat_thread = None

    def delete_node(self) -> None:
        """Deletes the Node and its Lease (absent ones are fine)."""
        self.stop_heartbeat()
        self._delete_node(request_timeout=None)

    def _delete_node(self, request_timeout: float | None) -> None:
        with contextlib.suppress(ApiException):
            self.coordination.delete_namespaced_lease(
                self.node_name, NODE_LEASE_NAMESPACE, _request_timeout=request_timeout
            )
        try:
            self.core.delete_node(self.node_name, _request_timeout=request_timeout)
            _event("node.deleted", node=self.node_name)
        except ApiException as exc:
            if not _is_status(exc, 404):
                raise
        self._node_ensured = False

    def _renew_lease(self, node_uid: str) -> None:
        spec = {
            "holderIdentity": self.node_name,
            "leaseDurationSeconds": NODE_LEASE_SECONDS,
            "renewTime": _now_micro(),
        }
        try:
            self.coordination.patch_namespaced_lease(
                self.node_name, NODE_LEASE_NAMESPACE, {"spec": spec}, _content_type=MERGE_PATCH
            )
            return
        except ApiException as exc:
            if not _is_status(exc, 404):
                raise
        self._ensure_namespace(NODE_LEASE_NAMESPACE)
        # Owned by the Node, as kubelet does it, so the garbage collector removes it with the node.
        owner = kubernetes.client.V1OwnerReference(
            api_version="v1", kind="Node", name=self.node_name, uid=node_uid
        )
        lease = kubernetes.client.V1Lease(
            api_version="coordination.k8s.io/v1",
            kind="Lease",
            metadata=kubernetes.client.V1ObjectMeta(
                name=self.node_name, namespace=NODE_LEASE_NAMESPACE, owner_references=[owner]
            ),
            spec=kubernetes.client.V1LeaseSpec(
                holder_identity=self.node_name, lease_duration_seconds=NODE_LEASE_SECONDS
            ),
        )
        with contextlib.suppress(ApiException):  # lost a race with a concurrent heartbeat: fine
            self.coordination.create_namespaced_lease(NODE_LEASE_NAMESPACE, lease)
        self.coordination.patch_namespaced_lease(
            self.node_name, NODE_LEASE_NAMESPACE, {"spec": spec}, _content_type=MERGE_PATCH
        )

    # -- pods

    def create_pod(
        self,
        namespace: str,
        name: str,
        labels: Mapping[str, str] | None = None,
        qos: str = "BestEffort",
        network: bool = False,
        root: Path | None = None,
    ) -> SimPod:
        """Creates a Running pod on this node: the API object, its cgroups, and a live process.

        With a root (see build_probe_root), the process runs `/bin/target sleep` chrooted into it,
        so the pod's /proc/<pid>/root is that directory, as a container's is its image."""
        qos_class = normalize_qos(qos)
        labels = dict(labels or {})
        self._ensure_namespace(namespace)
        created = self.core.create_namespaced_pod(
            namespace, _pod_manifest(namespace, name, labels, self.node_name, qos_class)
        )
        uid = created.metadata.uid
        container_id = new_container_id()
        pod_cgroup = self.cgroup_root / pod_cgroup_relpath(uid, qos_class, self.driver)
        pod = SimPod(
            name=name,
            namespace=namespace,
            uid=uid,
            qos=qos_class,
            container_id=container_id,
            pod_cgroup=pod_cgroup,
            container_cgroup=pod_cgroup / container_cgroup_name(container_id, self.driver),
            pid=0,
            labels=labels,
            root=root,
        )
        with self._lock:
            self._pods[pod.key] = pod
        try:
            if network:
                pod.network = podnet.create(uid)
            self._start_container(pod)
            self.core.patch_namespaced_pod_status(
                name, namespace, _pod_status(qos_class, container_id), _content_type=STRATEGIC_MERGE_PATCH
            )
        except BaseException:
            _event("pod.create_failed", logging.WARNING, pod=pod.key, uid=uid)
            with contextlib.suppress(Exception):  # keep the original error, not the rollback's
                self._remove_pod(pod, request_timeout=CLEANUP_REQUEST_TIMEOUT)
            raise
        _event(
            "pod.created",
            pod=pod.key,
            uid=uid,
            qos=qos_class,
            pid=pod.pid,
            cgroup=pod.pod_cgroup,
            labels=_fmt_labels(labels),
        )
        return pod

    def _start_container(self, pod: SimPod) -> None:
        self._mkdirs(pod.container_cgroup)
        # Own session: a Ctrl-C aimed at the test run must not kill "containers" behind cleanup's back.
        argv = ["sleep", "infinity"]
        if pod.root is not None:
            argv = ["chroot", str(pod.root), PROBE_TARGET, "sleep"]
        if pod.network is not None:
            argv = pod.network.exec_argv(argv)
        proc = spawn_in_cgroup(
            argv,
            pod.container_cgroup,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        pod._proc, pod.pid = proc, proc.pid
        if pod.root is not None:
            wait_chrooted(proc.pid, pod.root)
        expected = "/" + str(pod.container_cgroup.relative_to(find_cgroup2_mount()))
        actual = process_cgroup(proc.pid)
        if actual != expected:
            raise RuntimeError(f"pid {proc.pid} landed in cgroup {actual}, expected {expected}")

    def set_labels(self, pod: SimPod, labels: Mapping[str, str]) -> None:
        """Makes the pod's labels exactly `labels` (keys not given are removed)."""
        self._replace_labels(
            lambda patch: self.core.patch_namespaced_pod(
                pod.name, pod.namespace, patch, _content_type=JSON_PATCH
            ),
            labels,
        )
        pod.labels = dict(labels)
        _event("pod.labels_set", pod=pod.key, labels=_fmt_labels(labels))

    @staticmethod
    def _replace_labels(send: Callable[[list[dict[str, Any]]], Any], labels: Mapping[str, str]) -> None:
        # JSON patch "add" on /metadata/labels replaces the whole map, present or not, in one request.
        send([{"op": "add", "path": "/metadata/labels", "value": dict(labels)}])

    def delete_pod(self, pod: SimPod) -> None:
        """Deletes the Pod object at once (grace period 0), kills its processes, removes its cgroups."""
        self._remove_pod(pod, request_timeout=None)
        _event("pod.deleted", pod=pod.key, uid=pod.uid)

    def _remove_pod(self, pod: SimPod, request_timeout: float | None) -> None:
        try:
            self._delete_pod_object(pod, request_timeout)
        finally:
            self._stop_container(pod)
            with self._lock:
                self._pods.pop(pod.key, None)

    def _delete_pod_object(self, pod: SimPod, request_timeout: float | None) -> None:
        try:
            self.core.delete_namespaced_pod(
                pod.name, pod.namespace, grace_period_seconds=0, _request_timeout=request_timeout
            )
        except ApiException as exc:
            if not _is_status(exc, 404):
                raise

    def _stop_container(self, pod: SimPod) -> None:
        # Kill the whole pod cgroup: also catches leftovers of SimPod.run() that timed out.
        _kill_cgroup(pod.pod_cgroup)
        if pod.network is not None:
            podnet.delete(pod.network)
        if pod._proc is not None:
            with contextlib.suppress(ProcessLookupError):
                pod._proc.kill()
            pod._proc.wait(timeout=10)  # reap, or the zombie lingers until we exit
        _wait_unpopulated(pod.pod_cgroup, timeout=5)
        for cgroup in (pod.container_cgroup, pod.pod_cgroup):
            if _rmdir_cgroup(cgroup):
                self._forget_dir(cgroup)

    # -- cleanup

    def cleanup(self) -> None:
        """Removes everything this simulator created: processes, cgroups (root and parents it made),
        Pod objects and the Node. Never raises for a dead apiserver; safe to call repeatedly."""
        self.stop_heartbeat()
        api_alive = True
        for pod in self.pods:
            if api_alive:
                try:
                    self._delete_pod_object(pod, CLEANUP_REQUEST_TIMEOUT)
                except Exception as exc:  # apiserver gone: still clean the kernel side
                    api_alive = False
                    _event("cleanup.api_unreachable", logging.WARNING, pod=pod.key, error=type(exc).__name__)
            self._stop_container(pod)
            with self._lock:
                self._pods.pop(pod.key, None)
        if api_alive and self._node_ensured:
            try:
                self._delete_node(CLEANUP_REQUEST_TIMEOUT)
            except Exception as exc:
                _event(
                    "cleanup.node_delete_failed",
                    logging.WARNING,
                    node=self.node_name,
                    error=type(exc).__name__,
                )
        self._remove_created_dirs()

    def _remove_created_dirs(self) -> None:
        with self._lock:
            created = list(self._created_dirs)
        if self.cgroup_root in created and self.cgroup_root.exists():
            # The whole root is ours: also sweep anything others put there (stray processes, cgroups).
            cleanup_cgroup_tree(self.cgroup_root)
        for path in reversed(created):
            if _rmdir_cgroup(path, timeout=1.0):
                self._forget_dir(path)
        _event("cleanup.done", node=self.node_name, cgroup_root=self.cgroup_root)

    def _mkdirs(self, path: Path) -> None:
        """mkdir -p that remembers which directories it actually created."""
        missing = [p for p in (path, *path.parents) if not p.exists()]
        for directory in reversed(missing):
            try:
                directory.mkdir()
            except FileExistsError:
                continue
            with self._lock:
                self._created_dirs.append(directory)

    def _forget_dir(self, path: Path) -> None:
        with self._lock, contextlib.suppress(ValueError):
            self._created_dirs.remove(path)

    def _ensure_namespace(self, namespace: str) -> None:
        body = kubernetes.client.V1Namespace(
            api_version="v1", kind="Namespace", metadata=kubernetes.client.V1ObjectMeta(name=namespace)
        )
        try:
            self.core.create_namespace(body)
            _event("namespace.created", namespace=namespace)
        except ApiException as exc:
            if not _is_status(exc, 409):
                raise
        if namespace != NODE_LEASE_NAMESPACE:
            self._ensure_default_service_account(namespace)

    def _ensure_default_service_account(self, namespace: str) -> None:
        # ServiceAccount admission rejects pods until "default" exists; the controller manager
        # creates it asynchronously, so creating it here removes a race (409 when it won).
        body = kubernetes.client.V1ServiceAccount(
            api_version="v1",
            kind="ServiceAccount",
            metadata=kubernetes.client.V1ObjectMeta(name="default", namespace=namespace),
        )
        try:
            self.core.create_namespaced_service_account(namespace, body)
        except ApiException as exc:
            if not _is_status(exc, 409):
                raise


def _fmt_labels(labels: Mapping[str, str]) -> str:
    return ",".join(f"{key}={value}" for key, value in sorted(labels.items())) or "-"


# --- CLI -------------------------------------------------------------------------------------------------


def _parse_labels(pairs: Sequence[str]) -> dict[str, str]:
    labels = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise argparse.ArgumentTypeError(f"label {pair!r} is not key=value")
        labels[key] = value
    return labels


def _api_client(kubeconfig: str | None) -> kubernetes.client.ApiClient:
    import kubernetes.config  # only the CLI loads kubeconfigs; library callers pass a client

    return kubernetes.config.new_client_from_config(config_file=kubeconfig)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m e2e.podsim", description="Simulated kubelet pods.")
    parser.add_argument("--node", required=True)
    parser.add_argument("--cgroup-root", type=Path, required=True)
    parser.add_argument("--driver", choices=["systemd", "cgroupfs"], default="systemd")
    parser.add_argument("--kubeconfig", default=None, help="default: $KUBECONFIG or ~/.kube/config")
    sub = parser.add_subparsers(dest="command", required=True)
    node = sub.add_parser("ensure-node", help="create the Node and mark it Ready")
    node.add_argument("--label", action="append", default=[])
    pod = sub.add_parser("create-pod", help="create a Running pod; its process outlives this command")
    pod.add_argument("--namespace", required=True)
    pod.add_argument("--name", required=True)
    pod.add_argument("--label", action="append", default=[])
    pod.add_argument("--qos", default="BestEffort")
    sub.add_parser("cleanup-tree", help="kill processes in and remove the whole cgroup root")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="[podsim] %(message)s")

    if args.command == "cleanup-tree":
        return 0 if cleanup_cgroup_tree(args.cgroup_root) else 1
    sim = PodSimulator(_api_client(args.kubeconfig), args.node, args.cgroup_root, args.driver)
    if args.command == "ensure-node":
        sim.ensure_node(_parse_labels(args.label))
        return 0
    created = sim.create_pod(args.namespace, args.name, _parse_labels(args.label), args.qos)
    print(json.dumps(created.describe(), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
