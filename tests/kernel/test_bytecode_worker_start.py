"""The bytecode compile worker starts lean (worker_boot under `python -I -S`) and still loads, on the
real kernel: one process per build, nothing of the agent's Python environment, and no `site`."""

from __future__ import annotations

import base64
import json
import os
import platform
import signal
import socket
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from e2e.harness import wait_for
from node_agent.kernel.backend import Bytecode, ProgramBuild, ProgramRef
from node_agent.kernel.bpffs import BpffsBackend
from node_agent.kernel.compile_runner import WORKER_BOOT, WORKER_MODULE, worker_argv, worker_env
from node_agent.kernel.worker_spares import SPARES, Spares, start
from tests.kernel.bytecode_objects import Objects
from tests.kernel.support import EGRESS, INCLUDE_DIR

pytestmark = pytest.mark.kernel

REF = ProgramRef("team-a", "lean", "00000000000000c1")


@pytest.fixture
def spares() -> Iterator[None]:
    SPARES.drop()  # no spare of an earlier test: each build here starts as this test sets it up
    yield
    SPARES.drop()  # and none of this test's outlives it


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


def test_a_bytecode_build_runs_its_worker_through_the_boot_without_site_and_loads(
    bpffs_root: Path, objects: Objects, tmp_path: Path, spares: None
):
    python, log = recording_python(tmp_path)
    backend = BpffsBackend(bpffs_root, include_dirs=(INCLUDE_DIR,), bytecode_dir=objects.dir, python=python)
    build = ProgramBuild("", "count_egress", EGRESS, bytecode=Bytecode(data=objects["counter"]))
    loaded = backend.load(REF, build)
    assert loaded.prog_id > 0
    argv = json.loads(log.read_text().splitlines()[0])  # the build's; a spare may follow
    assert argv[:3] == ["-I", "-S", WORKER_BOOT]
    locations = dict(arg.split("=", 1) for arg in argv[3 : argv.index("--")])
    assert sorted(locations) == ["bpfleet_api", "node_agent"]
    assert Path(locations["node_agent"], "kernel", "compile_worker.py").is_file()


def test_the_bytecode_worker_ignores_the_agents_pythonpath(
    bpffs_root: Path, objects: Objects, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, spares: None
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


def _pids(log: Path) -> list[int]:
    return [int(json.loads(line)[0]) for line in log.read_text().splitlines()]


def _wait_gone(pid: int) -> None:
    """A worker that answered exits at once; the agent reaps it in the background."""
    wait_for(f"worker {pid} gone", lambda: not _alive(pid), timeout=10, interval=0.01)


def _alive(pid: int) -> bool:
    # Not a zombie: a reaped or killed-and-waited worker is gone from /proc.
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] != "Z"
    except FileNotFoundError:
        return False


def pid_recording_python(tmp_path: Path) -> tuple[str, Path]:
    """A python that logs its pid (the exec keeps it) for each process started."""
    log = tmp_path / "pids.log"
    wrapper = tmp_path / "python"
    wrapper.write_text(f'#!/bin/sh\necho "[$$]" >> {log}\nexec {sys.executable} "$@"\n')
    wrapper.chmod(0o755)
    return str(wrapper), log


def test_each_bytecode_build_has_its_own_process_and_the_next_one_is_started_after_it(
    bpffs_root: Path, objects: Objects, tmp_path: Path, spares: None
):
    python, log = pid_recording_python(tmp_path)
    backend = BpffsBackend(bpffs_root, include_dirs=(INCLUDE_DIR,), bytecode_dir=objects.dir, python=python)
    build = ProgramBuild("", "count_egress", EGRESS, bytecode=Bytecode(data=objects["counter"]))
    first = backend.load(REF, build)
    wait_for("the spare", lambda: len(_pids(log)) == 2, timeout=30, interval=0.01)
    used, spare = _pids(log)
    _wait_gone(used)  # reaped once it answered, off the build's path
    assert _alive(spare)
    second = backend.load(ProgramRef("team-a", "lean", "00000000000000c2"), build)
    assert second.prog_id != first.prog_id
    wait_for("the next spare", lambda: len(_pids(log)) == 3, timeout=30, interval=0.01)
    _wait_gone(spare)  # taken for the second build, and used for nothing else
    assert _alive(_pids(log)[2])


def test_a_spare_that_died_waiting_is_replaced_by_a_new_worker(
    bpffs_root: Path, objects: Objects, tmp_path: Path, spares: None
):
    python, log = pid_recording_python(tmp_path)
    backend = BpffsBackend(bpffs_root, include_dirs=(INCLUDE_DIR,), bytecode_dir=objects.dir, python=python)
    build = ProgramBuild("", "count_egress", EGRESS, bytecode=Bytecode(data=objects["counter"]))
    backend.load(REF, build)
    wait_for("the spare", lambda: len(_pids(log)) == 2, timeout=30, interval=0.01)
    os.kill(_pids(log)[1], signal.SIGKILL)
    wait_for("the spare to die", lambda: not _alive(_pids(log)[1]), timeout=10)
    loaded = backend.load(ProgramRef("team-a", "lean", "00000000000000c3"), build)
    assert loaded.prog_id > 0
    assert len(_pids(log)) >= 3  # a worker of its own, started for the build


def test_closed_spares_are_killed_and_not_started_again():
    pool = Spares()
    waiting = [sys.executable, "-c", "import sys; sys.stdin.read()"]
    pool.replenish(("x", True), lambda: start(lambda _fd: waiting, {}))
    wait_for("the spare", lambda: pool._ready, timeout=30, interval=0.01)
    proc = pool._ready[("x", True)].proc
    pool.close()
    assert proc.poll() is not None
    pool._fill(("x", True), lambda: start(lambda _fd: waiting, {}))
    assert pool.take(("x", True)) is None


def test_a_primed_spare_serves_the_first_bytecode_build(
    bpffs_root: Path, objects: Objects, tmp_path: Path, spares: None
):
    python, log = pid_recording_python(tmp_path)
    backend = BpffsBackend(bpffs_root, include_dirs=(INCLUDE_DIR,), bytecode_dir=objects.dir, python=python)
    backend.loader.prime_bytecode()  # as the agent does at start on a node with BTF
    wait_for("the primed spare", lambda: log.exists() and len(_pids(log)) == 1, timeout=30, interval=0.01)
    [primed] = _pids(log)
    build = ProgramBuild("", "count_egress", EGRESS, bytecode=Bytecode(data=objects["counter"]))
    assert backend.load(REF, build).prog_id > 0
    _wait_gone(primed)  # it did the build
    wait_for("the next spare", lambda: len(_pids(log)) == 2, timeout=30, interval=0.01)


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rpartition(")")[2].split()[1]) == pid:
                found.append(int(entry.name))
    return found


_NR_READ = {"x86_64": "0", "aarch64": "63", "riscv64": "63", "ppc64le": "3", "s390x": "3"}


def _reading_stdin(pid: int) -> bool:
    """Whether the process is blocked in read(2) on fd 0 (/proc/<pid>/syscall: number, then args)."""
    fields = Path(f"/proc/{pid}/syscall").read_text().split()
    return fields[:2] == [_NR_READ[platform.machine()], "0x0"]


def _capabilities(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(next(line.split()[1] for line in status.splitlines() if line.startswith("CapEff:")), 16)


def test_a_primed_spare_waits_inside_its_sandbox_before_any_request(
    bpffs_root: Path, objects: Objects, spares: None
):
    """It enters the sandbox a tenant's network program gets before its request is written: what
    it then reads, it reads in there (and the build does not wait for the sandbox)."""
    backend = BpffsBackend(bpffs_root, include_dirs=(INCLUDE_DIR,), bytecode_dir=objects.dir)
    backend.loader.prime_bytecode()
    wait_for("the primed spare", lambda: bool(SPARES._ready), timeout=30, interval=0.01)
    [spare] = SPARES._ready.values()
    wait_for("its sandboxed process", lambda: bool(_children(spare.proc.pid)), timeout=30, interval=0.01)
    [inside] = _children(spare.proc.pid)
    # Once it waits for its request: before, it may still be dropping what it must not keep.
    wait_for("it to wait on its stdin", lambda: _reading_stdin(inside), timeout=30, interval=0.01)
    for namespace in ("mnt", "net", "pid", "ipc", "uts"):
        assert os.readlink(f"/proc/{inside}/ns/{namespace}") != os.readlink(f"/proc/self/ns/{namespace}")
    assert _capabilities(inside) & ~_capabilities(os.getpid()) == 0
    assert _capabilities(inside) != _capabilities(os.getpid())  # it kept only its privilege's
    assert spare.proc.stdin is not None and not spare.proc.stdin.closed  # no request yet


def test_a_prepared_worker_refuses_a_request_for_another_sandbox(objects: Objects):
    """A spare prepared for a tenant's sandbox never builds a cluster admin's request in it."""
    prepared = {"privilege": "network", "cluster": False, "limits": {}}
    worker = start(
        lambda fd: [*worker_argv(sys.executable, True, fd, True), "--prepared", json.dumps(prepared)],
        worker_env(),
    )
    try:
        assert worker.proc.stdin is not None
        request = {
            "bytecode": base64.b64encode(objects["counter"]).decode(),
            "function": "count_egress",
            "progType": 0,
            "attachType": 0,
            **prepared,
            "privilege": "cluster",
            "cluster": True,
        }
        worker.proc.stdin.write(json.dumps(request).encode())
        worker.proc.stdin.close()
        message, fds, _flags, _ = socket.recv_fds(worker.ours, 1 << 16, 16)
        reply = json.loads(message)
        assert fds == [] and reply["ok"] is False
        assert "does not match the sandbox this worker was prepared with" in reply["message"]
    finally:
        worker.close()
