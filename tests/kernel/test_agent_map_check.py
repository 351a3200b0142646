"""The agent re-checks the memory of the maps a compile worker hands back, on the kernel's own
figures, instead of taking the sandboxed worker's word that they fit the cap."""

from __future__ import annotations

import os
from dataclasses import replace

import pytest
from bcc import BPF

from node_agent import errors
from node_agent.kernel.attach_types import kernel_attach
from node_agent.kernel.backend import ProgramBuild, ProgramRef
from node_agent.kernel.bpffs import BpffsBackend
from node_agent.kernel.compile_cgroup import CompileLimits
from node_agent.kernel.loader import check_map_memory, check_program_maps
from tests.kernel.support import INCLUDE_DIR

pytestmark = pytest.mark.kernel

EGRESS = kernel_attach({"type": "CgroupSkb", "direction": "Egress"})


def test_maps_over_the_cap_are_refused_by_the_agent_itself():
    bpf = BPF(text=b"BPF_ARRAY(big, u64, 2097152); int f(struct __sk_buff *s) { return 1; }")
    fd = os.dup(bpf["big"].map_fd)  # 16 MiB, made by someone other than the agent
    try:
        fits = ProgramBuild("", "f", EGRESS, max_map_bytes=32 << 20)
        check_map_memory({"big": fd}, fits)
        with pytest.raises(errors.MapTooLarge, match=r"map big needs 16\.\d MiB; .* 8\.0 MiB in all"):
            check_map_memory({"big": fd}, ProgramBuild("", "f", EGRESS, max_map_bytes=8 << 20))
    finally:
        os.close(fd)
        bpf.cleanup()


def test_a_map_the_compile_has_no_memory_for_is_too_large(bpffs_root):
    """Within a memory cgroup the kernel refuses to allocate it (ENOMEM); without one it is made and
    measured: MapTooLarge either way, never a bare compile error."""
    source = "BPF_ARRAY(huge, u64, 67108864); int f(struct __sk_buff *s) { return 1; }\n"  # 512 MiB
    backend = BpffsBackend(
        bpffs_root, include_dirs=(INCLUDE_DIR,), compile_limits=CompileLimits(memory_bytes=256 << 20)
    )
    with pytest.raises(errors.MapTooLarge, match=r"map huge .*this program's maps may use 64\.0 MiB in all"):
        backend.load(ProgramRef("team-a", "huge", "0000000000000003"), ProgramBuild(source, "f", EGRESS))
    assert not any(p.is_file() for p in bpffs_root.rglob("*"))


def test_the_agent_measures_the_maps_the_programs_use_not_the_ones_handed_over():
    """A hijacked worker that hides a map it uses, or hands over one no program uses, is caught."""
    bpf = BPF(
        text=b"BPF_ARRAY(big, u64, 2097152); BPF_ARRAY(stray, u64, 1);"
        b"int f(struct __sk_buff *s) { int k = 0; big.lookup(&k); return 1; }"
    )
    try:
        prog = bpf.load_func(b"f", BPF.CGROUP_SKB).fd
        small = ProgramBuild("", "f", EGRESS, max_map_bytes=8 << 20)
        with pytest.raises(errors.MapTooLarge, match=r"map big needs 16\.\d MiB"):
            check_program_maps({"prog": prog}, {}, small)  # big hidden from the agent
        with pytest.raises(errors.CompileError, match="handed over map stray, which no program uses"):
            check_program_maps({"prog": prog}, {"stray": bpf["stray"].map_fd}, small)
        check_program_maps({"prog": prog}, {"big": bpf["big"].map_fd}, replace(small, max_map_bytes=32 << 20))
    finally:
        bpf.cleanup()
