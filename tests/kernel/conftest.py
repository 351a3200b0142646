"""Fixtures for tests on the real kernel: a private bpffs root, the real backend, pod cgroups.

Everything a fixture creates is removed when the test ends, also when it fails: pins (which detach
their links), cgroups (after killing every process left in them).
"""

from __future__ import annotations

import os
import secrets
import shutil
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from e2e.podsim import cleanup_cgroup_tree, find_cgroup2_mount
from node_agent.kernel.bpffs import BpffsBackend
from tests.kernel.bytecode_objects import bytecode_backend, objects  # noqa: F401  (the bytecode tests')
from tests.kernel.support import BPFFS, INCLUDE_DIR


@dataclass(frozen=True)
class PodCgroup:
    """A pod cgroup as kubelet makes it: the pod directory and one container cgroup below it."""

    uid: str
    pod: Path
    container: Path

    @property
    def cgroup_id(self) -> int:
        """The cgroup v2 id of the pod cgroup: the inode number of its directory."""
        return os.stat(self.pod).st_ino

    def remove(self) -> None:
        """Removes both cgroups, as kubelet does when a pod goes (no process may be left in them)."""
        self.container.rmdir()
        self.pod.rmdir()

    def recreate(self) -> None:
        self.container.mkdir(parents=True)


@pytest.fixture
def bpffs_root() -> Iterator[Path]:
    """A fresh directory in bpffs, removed with every pin in it (which detaches pinned links)."""
    root = BPFFS / f"bpfleet-test-{secrets.token_hex(4)}"
    root.mkdir()
    try:
        yield root
    finally:
        if root.exists():
            shutil.rmtree(root)


@pytest.fixture
def backend(bpffs_root: Path) -> BpffsBackend:
    return BpffsBackend(
        bpffs_root,
        include_dirs=(INCLUDE_DIR,),
        node_wide_prelude=(INCLUDE_DIR / "node_wide_prelude.h").read_text(),
    )


@pytest.fixture
def pod_cgroups() -> Iterator[Callable[[], PodCgroup]]:
    """Factory of pod cgroups (pod + container child) under a random root in the cgroup v2 tree.

    At the end every process in the tree is killed and all of it is removed, root included.
    """
    root = find_cgroup2_mount() / f"bpfleet-test-{secrets.token_hex(4)}"

    def make() -> PodCgroup:
        uid = str(uuid.uuid4())
        pod = root / f"pod{uid}"
        container = pod / f"ctr-{secrets.token_hex(4)}"
        container.mkdir(parents=True)
        return PodCgroup(uid, pod, container)

    try:
        yield make
    finally:
        cleanup_cgroup_tree(root)
        assert not root.exists(), f"could not remove {root}"
