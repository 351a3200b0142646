"""The worker hands the loaded program over as fds; the agent checks them, pins them, closes them.

Real workers compile real programs here. The hostile-worker tests stand in for a worker taken over
through a compiler exploit: a small script in its place that sends what such a worker could.
"""

from __future__ import annotations

import os
import sys
import textwrap
from pathlib import Path

import pytest

from node_agent import errors
from node_agent.kernel import syscalls
from node_agent.kernel.backend import ProgramBuild, ProgramRef
from node_agent.kernel.bpffs import BpffsBackend
from tests.kernel.support import COUNTER, INCLUDE_DIR, REPO

pytestmark = pytest.mark.kernel

REF = ProgramRef("team-a", "counter", "0123456789abcdef")


def open_fds() -> set[int]:
    return {int(fd) for fd in os.listdir("/proc/self/fd")}


def pins(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if not p.is_dir())


def test_the_check_hook_sees_the_loaded_program_before_it_is_pinned(bpffs_root):
    seen = []

    def check(progs: dict[str, int], build: ProgramBuild) -> None:
        assert pins(bpffs_root) == []  # not pinned yet
        kinds = {role: os.readlink(f"/proc/self/fd/{fd}") for role, fd in progs.items()}
        seen.append((kinds, syscalls.prog_info(progs["prog"]).id, build))

    backend = BpffsBackend(bpffs_root, include_dirs=(INCLUDE_DIR,), check_loaded=check)
    before = open_fds()
    loaded = backend.load(REF, COUNTER)

    assert seen == [({"prog": "anon_inode:bpf-prog"}, loaded.prog_id, COUNTER)]
    [layout, *rest] = pins(bpffs_root)
    assert rest == [f"team-a/counter/{REF.version}/{p}" for p in ("maps/traffic", "prog")]
    # The map again, under its layout: what a next version checks before it takes the map over.
    assert layout.startswith(f"team-a/counter/{REF.version}/layouts/traffic-")
    assert open_fds() == before  # every received fd closed; the pins keep the program alive
    assert backend.loaded()[REF].prog_id == loaded.prog_id


def test_a_refusing_check_hook_pins_nothing_and_leaks_no_fd(bpffs_root):
    def refuse(progs: dict[str, int], build: ProgramBuild) -> None:
        raise errors.HelperNotAllowed("bpf_probe_write_user is not allowed")

    backend = BpffsBackend(bpffs_root, include_dirs=(INCLUDE_DIR,), check_loaded=refuse)
    before = open_fds()
    with pytest.raises(errors.HelperNotAllowed, match="bpf_probe_write_user"):
        backend.load(REF, COUNTER)
    assert open_fds() == before
    assert list(bpffs_root.rglob("*")) == []  # no version, no staging directory
    assert backend.loaded() == {}


# A worker in the real one's place: it compiles for real (unsandboxed), then sends `send(built)`.
_FAKE_WORKER = """
import json, os, socket, sys
sys.path.insert(0, {repo!r})
from node_agent.kernel.bcc_build import build
fd = int(sys.argv[sys.argv.index("--socket-fd") + 1])
request = json.load(sys.stdin)
built = build(request)
other = build(request)
{body}
with socket.socket(fileno=fd) as channel:
    socket.send_fds(channel, [json.dumps(reply).encode()], fds)
"""


def fake_worker(tmp_path: Path, body: str) -> str:
    script = tmp_path / "worker.py"
    script.write_text(_FAKE_WORKER.format(repo=str(REPO), body=textwrap.dedent(body)))
    wrapper = tmp_path / "python"
    wrapper.write_text(f'#!/bin/sh\nexec {sys.executable} {script} "$@"\n')
    wrapper.chmod(0o755)
    return str(wrapper)


def test_every_role_and_map_a_worker_sends_is_pinned_in_the_version_layout(bpffs_root, tmp_path):
    python = fake_worker(
        tmp_path,
        """
        reply = {"ok": True, "progs": ["prog", "user"], "maps": ["traffic"]}
        fds = [built.progs["prog"], other.progs["prog"], built.maps["traffic"]]
        """,
    )
    backend = BpffsBackend(bpffs_root, include_dirs=(INCLUDE_DIR,), python=python)
    loaded = backend.load(REF, COUNTER)
    version = f"team-a/counter/{REF.version}"
    assert pins(bpffs_root) == [f"{version}/maps/traffic", f"{version}/prog", f"{version}/prog-user"]
    with syscalls.closing_fd(syscalls.obj_get(str(bpffs_root / version / "prog"))) as fd:
        assert syscalls.prog_info(fd).id == loaded.prog_id
    assert loaded.maps == ("traffic",)


@pytest.mark.parametrize(
    ("body", "complaint"),
    [
        pytest.param(
            """
            reply = {"ok": True, "progs": ["prog"], "maps": []}
            fds = [os.open("/etc/hostname", os.O_RDONLY)]
            """,
            "not a bpf-prog",
            id="a file for the program",
        ),
        pytest.param(
            """
            reply = {"ok": True, "progs": ["prog"], "maps": []}
            fds = [built.maps["traffic"]]
            """,
            "not a bpf-prog",
            id="a map for the program",
        ),
        pytest.param(
            """
            reply = {"ok": True, "progs": ["prog"], "maps": ["../../../x"]}
            fds = [built.progs["prog"], built.maps["traffic"]]
            """,
            "map name",
            id="a path for a map name",
        ),
        pytest.param(
            """
            reply = {"ok": True, "progs": ["prog"], "maps": ["denied"]}
            fds = [built.progs["prog"], built.maps["traffic"]]
            """,
            "not 'denied'",
            id="a map under another name",
        ),
        pytest.param(
            """
            reply = {"ok": True, "progs": ["prog"], "maps": ["traffic"]}
            fds = [built.progs["prog"]]
            """,
            "1 fds for 1 programs and 1 maps",
            id="fewer fds than names",
        ),
        pytest.param(
            """
            reply = {"ok": True, "progs": ["user"], "maps": []}
            fds = [built.progs["prog"]]
            """,
            "missing or repeated",
            id="no prog role",
        ),
        pytest.param(
            """
            reply = {"ok": True, "progs": ["prog"], "maps": ["traffic"], "layouts": {"denied": "0" * 64}}
            fds = [built.progs["prog"], built.maps["traffic"]]
            """,
            "layout of 'denied'",
            id="a layout of a map it did not send",
        ),
        pytest.param(
            """
            reply = {"ok": True, "progs": ["prog"], "maps": ["traffic"], "layouts": {"traffic": "../x"}}
            fds = [built.progs["prog"], built.maps["traffic"]]
            """,
            "layout of 'traffic'",
            id="a path for a layout",
        ),
    ],
)
def test_a_hostile_worker_result_is_refused_pins_nothing_and_leaks_no_fd(
    bpffs_root, tmp_path, body, complaint
):
    backend = BpffsBackend(bpffs_root, include_dirs=(INCLUDE_DIR,), python=fake_worker(tmp_path, body))
    before = open_fds()
    with pytest.raises(errors.CompileError, match=complaint):
        backend.load(REF, COUNTER)
    assert open_fds() == before
    assert list(bpffs_root.rglob("*")) == []


def test_a_crashing_worker_is_a_compile_error_with_its_last_words(bpffs_root, tmp_path):
    python = tmp_path / "python"
    python.write_text("#!/bin/sh\necho 'clang: something broke' >&2\nkill -SEGV $$\n")
    python.chmod(0o755)
    backend = BpffsBackend(bpffs_root, include_dirs=(INCLUDE_DIR,), python=str(python))
    with pytest.raises(errors.CompileError, match=r"exited with code -11:\nclang: something broke"):
        backend.load(REF, COUNTER)
    assert list(bpffs_root.rglob("*")) == []
    # The agent goes on compiling with a real worker.
    assert BpffsBackend(bpffs_root, include_dirs=(INCLUDE_DIR,)).load(REF, COUNTER).prog_id > 0
