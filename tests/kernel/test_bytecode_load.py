"""Bytecode (CO-RE ELF objects) loaded with libbpf in the sandboxed compile worker, on the real kernel.

The same road as C: the worker loads, the agent checks the loaded instructions and the maps, pins,
attaches through the same links. Only the spec's function is loaded, with the spec's program type;
parameters set `.rodata` globals; CO-RE relocations resolve against this kernel's BTF.
"""

from __future__ import annotations

import os
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from e2e.sim_cgroups import run_in_cgroup
from node_agent import errors
from node_agent.kernel import syscalls
from node_agent.kernel.attach_types import PROG_TYPE_CGROUP_SKB, kernel_attach
from node_agent.kernel.backend import Bytecode, LoadedProgram, ProgramBuild, ProgramRef
from node_agent.kernel.bpffs import BpffsBackend
from tests.kernel.bytecode_objects import Objects, bytecode_backend, objects  # noqa: F401
from tests.kernel.support import EGRESS, bpftool

pytestmark = pytest.mark.kernel

REF = ProgramRef("team-a", "bytecode", "00000000000000b1")
NODE_EXEC = kernel_attach({"type": "Tracepoint", "name": "sched:sched_process_exec"}, scope="Node")
SEND = "import socket,sys\ns=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\n" + (
    "for _ in range(int(sys.argv[1])): s.sendto(b'x'*32, ('127.0.0.1', 9))"
)


def bytecode_build(data: bytes, function: str, attach=EGRESS, **extra) -> ProgramBuild:  # noqa: ANN001
    return ProgramBuild("", function, attach, bytecode=Bytecode(data=data), **extra)


def send_udp(cgroup: Path, count: int) -> None:
    result = run_in_cgroup([sys.executable, "-c", SEND, str(count)], cgroup, timeout=30)
    assert result.returncode == 0, result.stderr


def counts(loaded: LoadedProgram) -> tuple[int, int]:
    """(packets, label) of the counter object's `packets` map, read through its pin."""
    with syscalls.closing_fd(syscalls.obj_get(f"{loaded.pin_dir}/maps/packets")) as fd:
        [(_key, value)] = syscalls.map_items(fd, 4, 16)
    packets, label = struct.unpack("=QQ", value)
    return packets, label


def test_a_cgroup_skb_counter_loads_in_the_sandbox_attaches_and_counts_its_pods_traffic(
    bytecode_backend: BpffsBackend, objects: Objects, pod_cgroups
):
    pod = pod_cgroups()
    loaded = bytecode_backend.load(REF, bytecode_build(objects["counter"], "count_egress"))
    assert sorted(os.listdir(Path(loaded.pin_dir, "maps"))) == ["packets"]  # the used map, no .rodata
    bytecode_backend.attach(REF, pod.uid, pod.pod, EGRESS)
    send_udp(pod.container, 7)
    send_udp(pod_cgroups().container, 5)  # another pod's cgroup: not attached there
    assert counts(loaded) == (7, ord("n"))  # STEP 1 and LABEL "none", as compiled
    bytecode_backend.unload(REF)
    assert not Path(loaded.pin_dir).exists()
