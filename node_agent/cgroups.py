"""Finds a pod's pod-level cgroup v2 directory by its UID, the way kubelet lays them out.

kubelet names pod cgroups after the pod UID, under a QoS parent, in one of two layouts:
  systemd driver:  kubepods.slice/[kubepods-<qos>.slice/]kubepods-[<qos>-]pod<uid, - as _>.slice
  cgroupfs driver: kubepods/[<qos>/]pod<uid>
Guaranteed pods have no QoS level. Attaching at the pod level covers every container of the pod.
"""

from __future__ import annotations

import re
from pathlib import Path, PurePath

_QOS_CLASSES = ("Guaranteed", "Burstable", "BestEffort")


def cgroup_v2_mount(sys_fs_cgroup: Path = Path("/sys/fs/cgroup")) -> Path:
    """The cgroup v2 hierarchy: /sys/fs/cgroup on a pure v2 host, its `unified` child on a hybrid one."""
    if (sys_fs_cgroup / "cgroup.controllers").exists():
        return sys_fs_cgroup
    unified = sys_fs_cgroup / "unified"
    if (unified / "cgroup.procs").exists():
        return unified
    raise FileNotFoundError(f"no cgroup v2 hierarchy at {sys_fs_cgroup} or {unified}")


def pod_cgroup_candidates(uid: str, qos_class: str | None) -> list[PurePath]:
    """Relative paths where kubelet puts the pod's cgroup; every layout when the QoS is unknown."""
    classes = [qos_class] if qos_class in _QOS_CLASSES else list(_QOS_CLASSES)
    paths: list[PurePath] = []
    for qos in classes:
        assert qos is not None
        systemd_uid = uid.replace("-", "_")
        if qos == "Guaranteed":
            paths.append(PurePath("kubepods.slice", f"kubepods-pod{systemd_uid}.slice"))
            paths.append(PurePath("kubepods", f"pod{uid}"))
        else:
            q = qos.lower()
            paths.append(
                PurePath("kubepods.slice", f"kubepods-{q}.slice", f"kubepods-{q}-pod{systemd_uid}.slice")
            )
            paths.append(PurePath("kubepods", q, f"pod{uid}"))
    return paths


class PodCgroupResolver:
    """Looks pods up under the kubelet's cgroup root (the v2 mount unless kubelet nests its own)."""

    def __init__(self, kubelet_root: Path) -> None:
        self.kubelet_root = kubelet_root

    def find(self, uid: str, qos_class: str | None) -> Path | None:
        for rel in pod_cgroup_candidates(uid, qos_class):
            path = self.kubelet_root / rel
            if path.is_dir():
                return path
        return None


def processes(cgroup: Path) -> list[int]:
    """Pids of every process in a cgroup and below it (a pod's processes live in its containers'
    cgroups); cgroups that vanish meanwhile are skipped."""
    pids: list[int] = []
    for procs in sorted(cgroup.rglob("cgroup.procs")):
        try:
            pids += [int(line) for line in procs.read_text().split()]
        except OSError:
            continue
    return pids


# -- reading kubelet's names back (the fast path sees directories appear, not pods) ----------------

# The directories that hold pod cgroups, for both drivers: kubelet's root parent (Guaranteed pods)
# and the Burstable and BestEffort QoS parents below it.
QOS_PARENTS: tuple[PurePath, ...] = (
    PurePath("kubepods"),
    PurePath("kubepods", "burstable"),
    PurePath("kubepods", "besteffort"),
    PurePath("kubepods.slice"),
    PurePath("kubepods.slice", "kubepods-burstable.slice"),
    PurePath("kubepods.slice", "kubepods-besteffort.slice"),
)
# Pod UIDs are RFC 4122 UUIDs: anything else in a directory name is not a pod of kubelet's.
_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
_SYSTEMD_POD = re.compile(r"kubepods-(?:(?:burstable|besteffort)-)?pod([0-9a-f_]{36})\.slice")
# Container cgroups: cgroupfs names them by id; systemd by runtime-prefixed scope units.
_CONTAINER_ID = re.compile(r"[0-9a-f]{64}")
_SYSTEMD_CONTAINER = re.compile(r"(?:cri-containerd|crio|docker)-([0-9a-f]{64})\.scope")


def pod_uid_of(parent: PurePath, name: str) -> str | None:
    """The pod UID a directory `name` created in `parent` (relative to the kubelet root) stands
    for, or None when it is no pod cgroup (a QoS parent, a stray directory)."""
    if parent not in QOS_PARENTS:
        return None
    if parent.parts[0] == "kubepods":
        uid = name[3:] if name.startswith("pod") else ""
        return uid if _UUID.fullmatch(uid) else None
    match = _SYSTEMD_POD.fullmatch(name)
    if match is None or not _qos_matches(parent, name):
        return None
    uid = match.group(1).replace("_", "-")
    return uid if _UUID.fullmatch(uid) else None


def _qos_matches(parent: PurePath, name: str) -> bool:
    # kubepods-burstable-pod<uid>.slice belongs in kubepods-burstable.slice, and so on.
    if len(parent.parts) == 1:
        return name.startswith("kubepods-pod")
    qos = parent.name.removeprefix("kubepods-").removesuffix(".slice")
    return name.startswith(f"kubepods-{qos}-pod")


def container_id_of(name: str) -> str | None:
    """The container id in a container cgroup's directory name (either driver), else None."""
    if _CONTAINER_ID.fullmatch(name):
        return name
    match = _SYSTEMD_CONTAINER.fullmatch(name)
    return match.group(1) if match else None
