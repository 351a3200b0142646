"""Finds a pod's pod-level cgroup v2 directory by its UID, the way kubelet lays them out.

kubelet names pod cgroups after the pod UID, under a QoS parent, in one of two layouts:
  systemd driver:  kubepods.slice/[kubepods-<qos>.slice/]kubepods-[<qos>-]pod<uid, - as _>.slice
  cgroupfs driver: kubepods/[<qos>/]pod<uid>
Guaranteed pods have no QoS level. Attaching at the pod level covers every container of the pod.
"""

from __future__ import annotations

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
