"""The kubelet cgroup layouts the pod simulator reproduces (pure path computation, no kernel)."""

from __future__ import annotations

import re
from pathlib import Path, PurePosixPath

import pytest

from e2e.podsim import (
    container_cgroup_name,
    container_cgroup_relpath,
    find_cgroup2_mount,
    new_container_id,
    normalize_qos,
    pod_cgroup_relpath,
)

UID = "0b1c2d3e-4f50-6172-8394-a5b6c7d8e9f0"
UID_ = "0b1c2d3e_4f50_6172_8394_a5b6c7d8e9f0"
CID = "ab" * 32


@pytest.mark.parametrize(
    ("qos", "driver", "expected"),
    [
        (
            "BestEffort",
            "systemd",
            f"kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{UID_}.slice",
        ),
        (
            "Burstable",
            "systemd",
            f"kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_}.slice",
        ),
        ("Guaranteed", "systemd", f"kubepods.slice/kubepods-pod{UID_}.slice"),
        ("BestEffort", "cgroupfs", f"kubepods/besteffort/pod{UID}"),
        ("Burstable", "cgroupfs", f"kubepods/burstable/pod{UID}"),
        ("Guaranteed", "cgroupfs", f"kubepods/pod{UID}"),
    ],
)
def test_pod_cgroup_relpath(qos, driver, expected):
    assert pod_cgroup_relpath(UID, qos, driver) == PurePosixPath(expected)


@pytest.mark.parametrize("qos", ["besteffort", "BESTEFFORT", "bestEffort"])
def test_qos_is_case_insensitive(qos):
    assert normalize_qos(qos) == "BestEffort"
    assert pod_cgroup_relpath(UID, qos, "cgroupfs") == PurePosixPath(f"kubepods/besteffort/pod{UID}")


def test_relpath_is_relative_and_not_escaping():
    for driver in ("systemd", "cgroupfs"):
        path = container_cgroup_relpath(UID, "Burstable", driver, CID)
        assert not path.is_absolute()
        assert ".." not in path.parts


@pytest.mark.parametrize(
    ("driver", "expected"),
    [
        (
            "systemd",
            f"kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{UID_}.slice/"
            f"cri-containerd-{CID}.scope",
        ),
        ("cgroupfs", f"kubepods/besteffort/pod{UID}/{CID}"),
    ],
)
def test_container_cgroup_relpath(driver, expected):
    assert container_cgroup_relpath(UID, "BestEffort", driver, CID) == PurePosixPath(expected)


def test_container_cgroup_name():
    assert container_cgroup_name(CID, "systemd") == f"cri-containerd-{CID}.scope"
    assert container_cgroup_name(CID, "cgroupfs") == CID


@pytest.mark.parametrize("uid", ["", "../../etc", "a/b", "abc def", "pod\n"])
def test_rejects_uids_that_are_not_uids(uid):
    with pytest.raises(ValueError, match="invalid pod uid"):
        pod_cgroup_relpath(uid, "BestEffort", "systemd")


@pytest.mark.parametrize("cid", ["", "../x", "a/b", "abc.scope"])
def test_rejects_bad_container_ids(cid):
    with pytest.raises(ValueError, match="invalid container id"):
        container_cgroup_name(cid, "cgroupfs")


def test_rejects_unknown_qos_and_driver():
    with pytest.raises(ValueError, match="unknown QoS class"):
        pod_cgroup_relpath(UID, "Platinum", "systemd")
    with pytest.raises(ValueError, match="unknown cgroup driver"):
        pod_cgroup_relpath(UID, "BestEffort", "docker")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="unknown cgroup driver"):
        container_cgroup_name(CID, "docker")  # type: ignore[arg-type]


def test_new_container_id_looks_like_containerd():
    first, second = new_container_id(), new_container_id()
    assert re.fullmatch(r"[0-9a-f]{64}", first)
    assert first != second


def _mountinfo(tmp_path: Path, lines: list[str]) -> Path:
    path = tmp_path / "mountinfo"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_find_cgroup2_mount_hybrid(tmp_path):
    mountinfo = _mountinfo(
        tmp_path,
        [
            "30 24 0:26 / /sys/fs/cgroup ro,nosuid - tmpfs tmpfs ro,mode=755",
            "31 30 0:27 / /sys/fs/cgroup/unified rw,nosuid shared:10 - cgroup2 cgroup2 rw,nsdelegate",
            "32 30 0:28 / /sys/fs/cgroup/systemd rw - cgroup cgroup rw,xattr,name=systemd",
        ],
    )
    assert find_cgroup2_mount(mountinfo) == Path("/sys/fs/cgroup/unified")


def test_find_cgroup2_mount_pure_v2(tmp_path):
    mountinfo = _mountinfo(
        tmp_path,
        [
            "35 24 0:30 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:9 - cgroup2 cgroup2 rw",
        ],
    )
    assert find_cgroup2_mount(mountinfo) == Path("/sys/fs/cgroup")


def test_find_cgroup2_mount_absent(tmp_path):
    mountinfo = _mountinfo(tmp_path, ["22 1 0:21 / /proc rw - proc proc rw"])
    with pytest.raises(RuntimeError, match="no cgroup2"):
        find_cgroup2_mount(mountinfo)
