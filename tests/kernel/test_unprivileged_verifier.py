"""A tenant's cgroup and network programs are verified as an unprivileged loader's: the compile
that loads them holds CAP_BPF and CAP_NET_ADMIN only, so the verifier refuses kernel pointers
stored in maps (where metrics or readers of the pins would see them) and keeps its Spectre
mitigations. A ClusterEbpfProgram's compile keeps CAP_PERFMON, as tracing needs."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from node_agent import errors
from node_agent.kernel.attach_types import kernel_attach
from node_agent.kernel.backend import ProgramBuild, ProgramRef
from node_agent.kernel.bpffs import BpffsBackend

pytestmark = pytest.mark.kernel

INCLUDE_DIR = Path(__file__).resolve().parents[2] / "bpf" / "include"

# Stores the address of its own context, a kernel pointer, as a map value.
POINTER_LEAK = """
BPF_ARRAY(leak, u64, 1);
int leak_pointer(struct __sk_buff *skb)
{
    int zero = 0;
    u64 *value = leak.lookup(&zero);
    if (value)
        *value = (u64)skb;
    return 1;
}
"""
SAFE = "int leak_pointer(struct __sk_buff *skb) { return 1; }\n"
EGRESS = kernel_attach({"type": "CgroupSkb", "direction": "Egress"})
BUILD = ProgramBuild(POINTER_LEAK, "leak_pointer", EGRESS)


@pytest.fixture
def backend(bpffs_root: Path) -> BpffsBackend:
    return BpffsBackend(bpffs_root, include_dirs=(INCLUDE_DIR,))


def test_a_tenants_program_cannot_store_kernel_pointers(backend: BpffsBackend):
    with pytest.raises(errors.VerifierRejected, match="leaks addr"):
        backend.load(ProgramRef("team-a", "leak", "0000000000000001"), BUILD)


def test_a_cluster_program_is_verified_with_its_privileges(backend: BpffsBackend):
    loaded = backend.load(ProgramRef("_cluster", "leak", "0000000000000002"), replace(BUILD, cluster=True))
    assert loaded.prog_id > 0


_OPEN_BY_ID = """
import json, sys
from node_agent import errors
from node_agent.kernel import sandbox, syscalls
sandbox.enter([], sandbox.SandboxLimits(), keep=sandbox.CAPABILITIES_BY_PRIVILEGE[sys.argv[1]])
try:
    syscalls.prog_fd_by_id(int(sys.argv[2]))
    print(json.dumps("opened"))
except errors.KernelError as e:
    print(json.dumps(e.errno))
"""


@pytest.mark.parametrize(("privilege", "expected"), [("network", 1), ("tracing", 1), ("cluster", "opened")])
def test_only_a_cluster_compile_may_open_other_programs_by_id(backend: BpffsBackend, privilege, expected):
    """A tenant's compile, hijacked, still cannot reach another program or map by its id (EPERM)."""
    other = backend.load(ProgramRef("team-b", "other", "0000000000000004"), replace(BUILD, source=SAFE))
    proc = subprocess.run(
        [sys.executable, "-c", _OPEN_BY_ID, privilege, str(other.prog_id)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == expected
