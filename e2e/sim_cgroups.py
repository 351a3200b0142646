"""The cgroup v2 side of the pod simulator (e2e/podsim.py): where kubelet puts a pod's and a
container's cgroups, and the primitives that make, fill, empty and remove them.

Cgroup layouts, relative to the kubelet cgroup root (on a hybrid host /sys/fs/cgroup/unified):

    systemd   kubepods.slice/kubepods-<qos>.slice/kubepods-<qos>-pod<uid_>.slice/cri-containerd-<id>.scope
              kubepods.slice/kubepods-pod<uid_>.slice/...                      (Guaranteed)
    cgroupfs  kubepods/<qos>/pod<uid>/<id>
              kubepods/pod<uid>/<id>                                           (Guaranteed)
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import re
import secrets
import signal
import subprocess
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path, PurePosixPath
from typing import Any, Literal

CgroupDriver = Literal["systemd", "cgroupfs"]
QosClass = Literal["Guaranteed", "Burstable", "BestEffort"]

_QOS_BY_LOWER: dict[str, QosClass] = {
    "guaranteed": "Guaranteed",
    "burstable": "Burstable",
    "besteffort": "BestEffort",
}
# Pod UIDs are UUIDs and container ids hex; anything else could escape the cgroup root.
_UID_RE = re.compile(r"[A-Za-z0-9-]+")
_CONTAINER_ID_RE = re.compile(r"[A-Za-z0-9]+")
# Requests that make the apiserver compute the QoS class we claim in status (it rejects a mismatch).

log = logging.getLogger("bpfleet.e2e.podsim")


def event(event: str, level: int = logging.INFO, **fields: object) -> None:
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


def kill_cgroup(path: Path) -> None:
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


def wait_unpopulated(path: Path, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while cgroup_populated(path):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def rmdir_cgroup(path: Path, timeout: float = 5.0) -> bool:
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
                event(
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
    kill_cgroup(root)
    if not wait_unpopulated(root, timeout):
        event("cgroup.tree_still_populated", logging.WARNING, root=root)
    removed = 0
    for directory, _, _ in os.walk(root, topdown=False):
        removed += rmdir_cgroup(Path(directory))
    event("cgroup.tree_removed", root=root, cgroups=removed)
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
