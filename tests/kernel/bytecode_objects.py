"""The ELF objects of the bytecode tests, built once per session with clang against this kernel's
BTF (bpftool's vmlinux.h), the way `make bytecode` builds the agent's own: the test sources are in
tests/kernel/bytecode/, the pod filter in bpf/bytecode/."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from node_agent.kernel.bpffs import BpffsBackend
from node_agent.kernel.loader import ENTRY_OBJECT
from tests.kernel.support import INCLUDE_DIR, REPO

SOURCES = REPO / "tests" / "kernel" / "bytecode"
ENTRY_SOURCE = REPO / "bpf" / "bytecode" / "bpfleet_entry.bpf.c"
CLANG = shutil.which("clang") or "clang-14"  # `make deps` installs Debian's clang (clang-14)
# Object name -> (source, extra clang flags).
OBJECTS = {
    "counter": ("counter.bpf.c", ()),
    "counter-v2": ("counter.bpf.c", ("-DV2",)),
    "counter-changed": ("counter.bpf.c", ("-DCHANGED",)),
    "tracing": ("tracing.bpf.c", ()),
    "pinned": ("refused.bpf.c", ("-DPINNED",)),
    "ksym": ("refused.bpf.c", ("-DKSYM",)),
    "kfunc": ("refused.bpf.c", ("-DKFUNC",)),
    "huge": ("refused.bpf.c", ("-DHUGE",)),
    "own-name": ("refused.bpf.c", ("-DOWN_NAME",)),
}


@dataclass(frozen=True)
class Objects:
    dir: Path  # also the agent's bytecode dir: it holds the pod filter's object

    def __getitem__(self, name: str) -> bytes:
        return (self.dir / f"{name}.bpf.o").read_bytes()


def _clang(source: Path, out: Path, include: Path, *flags: str) -> None:
    argv = [CLANG, "-target", "bpf", "-g", "-O2", f"-I{include}", *flags, "-c", str(source), "-o", str(out)]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, f"{' '.join(argv)} failed:\n{proc.stderr}"


@pytest.fixture(scope="session")
def objects(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Objects]:
    out = tmp_path_factory.mktemp("bytecode")
    header = subprocess.run(
        ["bpftool", "btf", "dump", "file", "/sys/kernel/btf/vmlinux", "format", "c"],
        capture_output=True,
        timeout=120,
        check=True,
    ).stdout
    (out / "vmlinux.h").write_bytes(header)
    _clang(ENTRY_SOURCE, out / ENTRY_OBJECT, out)
    for name, (source, flags) in OBJECTS.items():
        _clang(SOURCES / source, out / f"{name}.bpf.o", out, *flags)
    yield Objects(out)


@pytest.fixture
def bytecode_backend(bpffs_root: Path, objects: Objects) -> BpffsBackend:
    """The real backend, its loader finding the pod filter's object among the test objects."""
    return BpffsBackend(
        bpffs_root,
        include_dirs=(INCLUDE_DIR,),
        node_wide_prelude=(INCLUDE_DIR / "node_wide_prelude.h").read_text(),
        bytecode_dir=objects.dir,
    )
