"""What a tenant's source can reach while it compiles: nothing of the node but the headers.

The compile runs in the worker's sandbox (node_agent/kernel/sandbox.py). These tests plant files a
hostile `#include` would want (a file under /root and /var, a service-account token), point a
pinned BCC table into bpffs, and look around from inside the sandbox itself with a small Python
payload run exactly as the worker enters it.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import secrets
import shutil
import socket
import struct
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from node_agent import errors
from node_agent.kernel import sandbox_root
from node_agent.kernel.backend import ProgramBuild, ProgramRef
from node_agent.kernel.bpffs import BpffsBackend
from tests.kernel.support import COUNTER_FILE, EGRESS, INCLUDE_DIR, project_python

pytestmark = pytest.mark.kernel

REF = ProgramRef("team-a", "hostile", "0123456789abcdef")
TOKEN_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")


def _source(include: str) -> str:
    return f'#include "{include}"\nint count_packets(struct __sk_buff *skb) {{ return 1; }}\n'


@contextlib.contextmanager
def planted(path: Path) -> Iterator[str]:
    """A file at `path` holding a random marker; it and the directories made for it are removed."""
    made = [p for p in [path.parent, *path.parent.parents] if not p.exists()]
    marker = f"bpfleet_marker_{secrets.token_hex(8)}"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"{marker} secret text\n")
    try:
        yield marker
    finally:
        path.unlink(missing_ok=True)
        for directory in made:  # deepest first
            with contextlib.suppress(OSError):
                directory.rmdir()


@pytest.fixture
def unsandboxed(bpffs_root: Path) -> BpffsBackend:
    return BpffsBackend(bpffs_root, include_dirs=(INCLUDE_DIR,), sandbox=False)


def _nothing_pinned(root: Path) -> bool:
    return [p for p in root.rglob("*") if not p.is_dir()] == []


@pytest.mark.parametrize(
    "where",
    [
        Path("/root") / f"bpfleet-test-{secrets.token_hex(4)}.h",
        Path("/var/tmp") / f"bpfleet-test-{secrets.token_hex(4)}.h",
        TOKEN_DIR.parent / f"bpfleet-test-{secrets.token_hex(4)}" / "token",
    ],
    ids=["root", "var", "secrets"],
)
def test_an_include_of_a_node_file_fails_and_its_text_appears_nowhere(
    backend, unsandboxed, bpffs_root, where
):
    with planted(where) as marker:
        with pytest.raises(errors.CompileError) as refused:
            backend.load(REF, ProgramBuild(_source(str(where)), "count_packets", EGRESS))
        # The test can fail: the same source outside the sandbox does read the file (and only the
        # elision of diagnostics outside program.c keeps its text out).
        with pytest.raises(errors.CompileError) as leaked:
            unsandboxed.load(REF, ProgramBuild(_source(str(where)), "count_packets", EGRESS))

    assert marker not in str(refused.value)
    assert "file not found" in str(refused.value)
    assert "error elided" in str(leaked.value) and marker not in str(leaked.value)
    assert _nothing_pinned(bpffs_root)


def test_a_pinned_table_creates_no_pin_and_opens_no_other_pin(backend, bpffs_root):
    target = Path("/sys/fs/bpf") / f"bpfleet-test-pinned-{secrets.token_hex(4)}"
    target.mkdir()
    try:
        # Another tenant's map, pinned where a hostile table points.
        subprocess.run(
            [
                *("bpftool", "map", "create", str(target / "theirs"), "type", "hash"),
                *("key", "4", "value", "8", "entries", "16", "name", "theirs"),
            ],
            check=True,
            capture_output=True,
            timeout=30,
        )
        for name in ("x", "theirs"):
            source = (
                f'BPF_TABLE_PINNED("hash", u32, u64, m, 16, "{target}/{name}");\n'
                "int count_packets(struct __sk_buff *skb) { u32 k = 0; return m.lookup(&k) ? 1 : 1; }\n"
            )
            with pytest.raises(errors.ProgramBuildError):
                backend.load(REF, ProgramBuild(source, "count_packets", EGRESS))
            assert sorted(p.name for p in target.iterdir()) == ["theirs"]
            assert _nothing_pinned(bpffs_root)
    finally:
        shutil.rmtree(target, ignore_errors=True)


_PROBE = """
import errno, json, os, sys
from node_agent.kernel import sandbox
sandbox.enter(sys.argv[1:], sandbox.SandboxLimits())
import fcntl, socket, struct

def lo_flags():
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        ifreq = fcntl.ioctl(s, 0x8913, struct.pack("16sH14x", b"lo", 0))  # SIOCGIFFLAGS
    return struct.unpack("16sH14x", ifreq)[1]

def mount_error():
    try:
        os.mkdir("/tmp/m")
        sandbox.mount("tmpfs", "/tmp/m", "tmpfs", 0)
    except Exception as e:
        return str(e)
    return ""

lines = open("/proc/self/status").read().splitlines()
status = dict(line.split(":\\t", 1) for line in lines if ":\\t" in line)
print(json.dumps({
    "pid": os.getpid(),
    "root": sorted(os.listdir("/")),
    "etc": sorted(os.listdir("/etc")),
    "procPids": sorted(int(p) for p in os.listdir("/proc") if p.isdigit()),
    "interfaces": [name for _, name in socket.if_nameindex()],
    "loFlags": lo_flags(),
    "paths": {p: os.path.lexists(p) for p in sys.stdin.read().split()},
    "capEff": int(status["CapEff"], 16),
    "noNewPrivs": status["NoNewPrivs"].strip(),
    "seccomp": status["Seccomp"].strip(),
    "mount": mount_error(),
    "hostname": socket.gethostname(),
    "rootWritable": os.access("/usr", os.W_OK) and not os.statvfs("/usr").f_flag & os.ST_RDONLY,
}))
"""


def test_inside_the_sandbox_the_node_is_out_of_sight():
    hidden = ["/sys/fs/bpf", "/sys/kernel/tracing", "/sys/kernel/debug", "/sys", "/root", "/home", "/var"]
    hidden += ["/run/secrets", str(TOKEN_DIR / "token"), "/etc/passwd", "/etc/hostname"]
    with planted(TOKEN_DIR / "token"):
        assert all(os.path.lexists(p) for p in ("/sys/fs/bpf", "/root", "/var", str(TOKEN_DIR / "token")))
        probe = project_python(
            _PROBE, INCLUDE_DIR, input="\n".join([*hidden, str(INCLUDE_DIR / "bpfleet.h")]), timeout=60
        )
    assert probe.returncode == 0, probe.stderr
    seen = json.loads(probe.stdout)

    assert seen["pid"] == 1
    assert seen["procPids"] == [1]  # no process of the node, the agent or other pods
    assert seen["interfaces"] == ["lo"]
    assert seen["loFlags"] & 1 == 0  # IFF_UP
    assert seen["paths"] == {**dict.fromkeys(hidden, False), str(INCLUDE_DIR / "bpfleet.h"): True}
    assert seen["etc"] == ["ld.so.cache"]
    # The root holds the allowed trees (and the symlinks leading to them), /proc, /dev and /tmp.
    plan = sandbox_root.plan(sandbox_root.needed_paths([str(INCLUDE_DIR)]))
    tops = {p.split("/")[1] for p in [*plan.trees(), *plan.symlinks()]}
    assert set(seen["root"]) == tops | {"proc", "dev", "tmp"}
    assert not tops & {"root", "home", "var", "run", "sys", "boot", "srv", "mnt", "media"}
    capabilities = {12, 21, 38, 39}  # NET_ADMIN, SYS_ADMIN, PERFMON, BPF
    assert seen["capEff"] == sum(1 << c for c in capabilities)
    assert (seen["noNewPrivs"], seen["seccomp"]) == ("1", "2")
    assert os.strerror(errno.EPERM) in seen["mount"]
    assert seen["hostname"] == "bpfleet-compile"
    assert seen["rootWritable"] is False


def test_the_sandbox_leaves_the_host_mounts_as_they_were():
    before = Path("/proc/self/mountinfo").read_text()
    probe = project_python(_PROBE, INCLUDE_DIR, input="", timeout=60)
    assert probe.returncode == 0, probe.stderr
    assert Path("/proc/self/mountinfo").read_text() == before


def test_lo_flags_probe_reads_the_host_loopback_as_up():
    # The probe's ioctl can fail the test: on the host, lo is up.
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        ifreq = fcntl.ioctl(s, 0x8913, struct.pack("16sH14x", b"lo", 0))
    assert struct.unpack("16sH14x", ifreq)[1] & 1 == 1


_LOAD = """
import json, sys
from pathlib import Path
from node_agent import errors
from node_agent.kernel.attach_types import kernel_attach
from node_agent.kernel.backend import ProgramBuild, ProgramRef
from node_agent.kernel.bpffs import BpffsBackend

root, include_dir, source_file = sys.argv[1:]
backend = BpffsBackend(Path(root), include_dirs=(Path(include_dir),))
egress = kernel_attach({"type": "CgroupSkb", "direction": "Egress"})
try:
    build = ProgramBuild(Path(source_file).read_text(), "count_packets", egress)
    backend.load(ProgramRef("team-a", "c", "v1"), build)
    print(json.dumps({"error": None}))
except errors.ProgramBuildError as e:
    print(json.dumps({"error": type(e).__name__, "message": str(e)}))
"""


def test_a_node_where_the_sandbox_cannot_be_made_fails_the_compile_and_says_why(bpffs_root):
    # Without CAP_SYS_ADMIN no namespace can be made. An unsandboxed fallback would still compile
    # (and fail later, on another error): the message must say that the sandbox is what is missing.
    run = project_python(
        _LOAD,
        *(bpffs_root, INCLUDE_DIR, COUNTER_FILE),
        timeout=120,
        prefix=("setpriv", "--bounding-set=-sys_admin", "--inh-caps=-sys_admin"),
    )
    assert run.returncode == 0, run.stderr
    result = json.loads(run.stdout)
    assert result["error"] == "CompileError"
    assert "the compile sandbox failed: unshare" in result["message"]
    assert os.strerror(errno.EPERM) in result["message"]
    assert _nothing_pinned(bpffs_root)


def test_include_dirs_below_tmp_are_seen(bpffs_root, tmp_path):
    """The sandbox's own /tmp must not hide the trees it binds below /tmp (a checkout there, say)."""
    headers = tmp_path / "include"
    headers.mkdir()
    (headers / "below_tmp.h").write_text("#define BELOW_TMP 1\n")
    backend = BpffsBackend(bpffs_root, include_dirs=(INCLUDE_DIR, headers))
    source = "#include <below_tmp.h>\nint count_packets(struct __sk_buff *skb) { return BELOW_TMP; }\n"
    assert backend.load(REF, ProgramBuild(source, "count_packets", EGRESS)).prog_id > 0
