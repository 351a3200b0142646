"""Kprobes through the backend: attached where the kernel has them; refused cleanly, leaving nothing
attached, where it has not (the agent normally stops earlier there: node features report
UnsupportedOnNode before any compile)."""

from __future__ import annotations

from pathlib import Path

import pytest

from node_agent import errors
from node_agent.kernel.attach_types import kernel_attach
from node_agent.kernel.backend import ProgramBuild, ProgramRef
from node_agent.kernel.syscalls import KPROBE_PMU

pytestmark = pytest.mark.kernel

SOURCE = "int on_call(struct pt_regs *ctx) { if (!bpfleet_pod_selected()) return 0; return 0; }\n"
REF = ProgramRef("team-a", "probe", "00000000000000bb")


def test_a_kprobe_attaches_where_kprobes_exist_and_fails_cleanly_elsewhere(backend, pod_cgroups):
    attach = kernel_attach({"type": "Kprobe", "function": "do_sys_openat2"})
    loaded = backend.load(REF, ProgramBuild(SOURCE, "on_call", attach))
    pod = pod_cgroups()
    node_link = Path(loaded.pin_dir) / "links" / "node"
    if KPROBE_PMU.exists():
        assert backend.attach(REF, pod.uid, pod.pod, attach).live
        assert node_link.exists()
    else:
        with pytest.raises(errors.AttachFailed, match="cannot probe kernel function do_sys_openat2"):
            backend.attach(REF, pod.uid, pod.pod, attach)
        assert not node_link.exists()
    backend.unload(REF)
    assert backend.loaded() == {}
