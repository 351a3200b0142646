"""The agent process never imports BCC: compiling happens in the short-lived compile worker.

BCC brings LLVM and clang (~120 MB) into a process and a hostile source may crash the compiler, so a
load() in the agent must leave neither the bcc module nor its native libraries in the agent. The
check runs in a fresh interpreter, since the test process itself may have imported bcc.
"""

from __future__ import annotations

import json

import pytest

from node_agent.kernel.backend import ProgramRef
from node_agent.kernel.bpffs import BpffsBackend
from tests.kernel.support import COUNTER_FILE, INCLUDE_DIR, project_python

pytestmark = pytest.mark.kernel

_AGENT_SCRIPT = """
import json, sys
from pathlib import Path
from node_agent.kernel.attach_types import kernel_attach
from node_agent.kernel.backend import ProgramBuild, ProgramRef
from node_agent.kernel.bpffs import BpffsBackend

root, include_dir, source_file = sys.argv[1:]
backend = BpffsBackend(Path(root), include_dirs=(Path(include_dir),))
egress = kernel_attach({"type": "CgroupSkb", "direction": "Egress"})
build = ProgramBuild(Path(source_file).read_text(), "count_packets", egress)
loaded = backend.load(ProgramRef("team-a", "counter", "v1"), build)
native = {
    line.split()[-1]
    for line in Path("/proc/self/maps").read_text().splitlines()
    if any(lib in line for lib in ("libbcc", "libLLVM", "libclang"))
}
print(json.dumps({
    "progId": loaded.prog_id,
    "bccModules": sorted(m for m in sys.modules if m == "bcc" or m.startswith("bcc.")),
    "nativeLibraries": sorted(native),
}))
"""


def test_load_in_a_fresh_process_never_imports_bcc_there(bpffs_root):
    result = project_python(_AGENT_SCRIPT, bpffs_root, INCLUDE_DIR, COUNTER_FILE, timeout=180)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)

    assert report["bccModules"] == []
    assert report["nativeLibraries"] == []
    # The load did happen: the program is pinned and alive after that process exited.
    loaded = BpffsBackend(bpffs_root).loaded()
    assert [(ref, prog.prog_id) for ref, prog in loaded.items()] == [
        (ProgramRef("team-a", "counter", "v1"), report["progId"])
    ]
