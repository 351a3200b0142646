"""The bytecode compile worker starts lean (worker_boot under `python -I -S`) and still loads, on the
real kernel: one process per build, nothing of the agent's Python environment, and no `site`."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from node_agent.kernel.backend import Bytecode, ProgramBuild, ProgramRef
from node_agent.kernel.bpffs import BpffsBackend
from node_agent.kernel.compile_runner import WORKER_BOOT, WORKER_MODULE, worker_argv
from tests.kernel.bytecode_objects import Objects
from tests.kernel.support import EGRESS, INCLUDE_DIR

pytestmark = pytest.mark.kernel

REF = ProgramRef("team-a", "lean", "00000000000000c1")


def recording_python(tmp_path: Path) -> tuple[str, Path]:
    """A python that appends each run's argv (one JSON line) to a log, then is the real one."""
    log = tmp_path / "argv.log"
    wrapper = tmp_path / "python"
    wrapper.write_text(
        "#!/bin/sh\n"
        f'{sys.executable} -c "import json,sys; print(json.dumps(sys.argv[1:]))" "$@" >> {log}\n'
        f'exec {sys.executable} "$@"\n'
    )
    wrapper.chmod(0o755)
    return str(wrapper), log


def test_a_bytecode_build_runs_one_worker_through_the_boot_without_site_and_loads(
    bpffs_root: Path, objects: Objects, tmp_path: Path
):
    python, log = recording_python(tmp_path)
    backend = BpffsBackend(bpffs_root, include_dirs=(INCLUDE_DIR,), bytecode_dir=objects.dir, python=python)
    build = ProgramBuild("", "count_egress", EGRESS, bytecode=Bytecode(data=objects["counter"]))
    loaded = backend.load(REF, build)
    assert loaded.prog_id > 0
    [argv] = [json.loads(line) for line in log.read_text().splitlines()]
    assert argv[:3] == ["-I", "-S", WORKER_BOOT]
    locations = dict(arg.split("=", 1) for arg in argv[3 : argv.index("--")])
    assert sorted(locations) == ["bpfleet_api", "node_agent"]
    assert Path(locations["node_agent"], "kernel", "compile_worker.py").is_file()


def test_the_bytecode_worker_ignores_the_agents_pythonpath(
    bpffs_root: Path, objects: Objects, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    # The worker passes PYTHONPATH on (the C worker's imports honour it); -I must keep a module
    # there from shadowing the standard library's in the bytecode worker.
    shadow = tmp_path / "shadow"
    shadow.mkdir()
    marker = tmp_path / "imported"
    (shadow / "json.py").write_text(f"open({str(marker)!r}, 'w').close()\nraise ImportError('shadowed')\n")
    monkeypatch.setenv("PYTHONPATH", str(shadow))
    backend = BpffsBackend(bpffs_root, include_dirs=(INCLUDE_DIR,), bytecode_dir=objects.dir)
    build = ProgramBuild("", "count_egress", EGRESS, bytecode=Bytecode(data=objects["counter"]))
    assert backend.load(REF, build).prog_id > 0
    assert not marker.exists()


def test_only_bytecode_takes_the_boot():
    assert worker_argv("py", False, 7, True) == ["py", "-m", WORKER_MODULE, "--socket-fd", "7"]
    bytecode = worker_argv("py", True, 7, False)
    assert bytecode[:4] == ["py", "-I", "-S", WORKER_BOOT]
    assert bytecode[-3:] == ["--socket-fd", "7", "--no-sandbox"]
