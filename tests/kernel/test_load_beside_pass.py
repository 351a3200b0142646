"""load() on a compile-pool thread while the pass works on the same pin tree (the real backend and
compile): a pass never tidies away a version being published, and unloading the program's old
version while its new one compiles leaves the new one whole."""

from __future__ import annotations

import threading
from pathlib import Path

from node_agent.kernel.backend import ProgramBuild, ProgramRef
from node_agent.kernel.bpffs import BpffsBackend
from node_agent.kernel.loader import Loaded
from node_agent.kernel.publish import staging_dir
from tests.kernel.support import COUNTER, EGRESS


class PausedLoader:
    """The backend's own loader, held at the moment a version's staging pins exist."""

    def __init__(self, loader) -> None:
        self.loader = loader
        self.staged = threading.Event()
        self.release = threading.Event()

    def load(self, pin_dir: Path, build: ProgramBuild, previous_dir: Path | None = None) -> Loaded:
        staging_dir(pin_dir).mkdir()  # what publish makes first
        self.staged.set()
        assert self.release.wait(60)
        return self.loader.load(pin_dir, build, previous_dir)  # publish clears and remakes its staging dir


def test_a_pass_beside_a_compile_leaves_its_pins_and_directories(
    backend: BpffsBackend, bpffs_root, pod_cgroups
):
    pod = pod_cgroups()
    old, new = (
        ProgramRef("team-a", "counter", "0000000000000001"),
        ProgramRef("team-a", "counter", "0000000000000002"),
    )
    backend.load(old, COUNTER)
    backend.attach(old, pod.uid, pod.pod, EGRESS)
    paused = PausedLoader(backend.loader)
    backend.loader = paused  # type: ignore[assignment]
    failures: list[BaseException] = []

    def compile_new() -> None:
        try:
            backend.load(new, COUNTER)
        except BaseException as e:
            failures.append(e)

    compiling = threading.Thread(target=compile_new)
    compiling.start()
    try:
        assert paused.staged.wait(30)
        staging = staging_dir(bpffs_root / new.namespace / new.name / new.version)
        # What a pass does meanwhile: read the tree (which tidies unfinished pins away), unload the
        # old version (which removes the directories it leaves empty).
        assert set(backend.loaded()) == {old}
        backend.unload(old)
        assert staging.is_dir(), "the pass removed the pins of a version being published"
    finally:
        paused.release.set()
        compiling.join(120)
    assert not failures, failures
    assert set(backend.loaded()) == {new}
    version = bpffs_root / new.namespace / new.name / new.version
    assert (version / "prog").exists() and [p.name for p in (version / "maps").iterdir()] == ["traffic"]
    assert not staging.exists()
