"""Uprobe symbols are read from the tenant's binary by the sandboxed symbol worker, never in the agent:
the right offset, hostile files refused by name, and nothing of the ELF parser in the caller."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from node_agent.errors import ElfError
from node_agent.kernel import syscalls
from node_agent.kernel.symbol_lookup import symbol_offset
from tests.unit.test_elf import SOURCE, binutils_offset, run

pytestmark = pytest.mark.kernel


@pytest.fixture(scope="module")
def binary(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("symbols")
    (out / "t.c").write_text(SOURCE)
    run("gcc", "-O2", "-fPIE", "-pie", "-o", str(out / "target"), str(out / "t.c"))
    return out / "target"


def offset_of(path: Path, symbol: str) -> int:
    with syscalls.closing_fd(os.open(path, os.O_PATH | os.O_CLOEXEC)) as fd:
        return symbol_offset(fd, symbol, "/bin/target", sys.executable)


def test_the_offset_is_the_one_binutils_computes(binary: Path):
    assert offset_of(binary, "bpfleet_probe_target") == binutils_offset(binary, "bpfleet_probe_target")


def test_hostile_files_fail_by_name(binary: Path, tmp_path: Path):
    garbage = tmp_path / "garbage"
    garbage.write_bytes(b"\x7fELF\x02\x01\x01" + os.urandom(4096))
    with pytest.raises(ElfError, match="/bin/target is not a readable ELF file"):
        offset_of(garbage, "main")
    with pytest.raises(ElfError, match="no symbol bpfleet_nope in /bin/target"):
        offset_of(binary, "bpfleet_nope")


_CALLER = """
import json, os, sys
from node_agent.kernel.symbol_lookup import symbol_offset
fd = os.open(sys.argv[1], os.O_PATH)
offset = symbol_offset(fd, "bpfleet_probe_target", "/bin/target", sys.executable)
print(json.dumps({"offset": offset, "parser": sorted(m for m in sys.modules if m.startswith("elftools"))}))
"""


def test_the_caller_never_parses_the_binary_itself(binary: Path):
    proc = subprocess.run(
        [sys.executable, "-c", _CALLER, str(binary)], capture_output=True, text=True, check=True, timeout=60
    )
    result = json.loads(proc.stdout)
    assert result["offset"] > 0 and result["parser"] == []
