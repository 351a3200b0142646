"""Scope Node on the real kernel: ClusterEbpfPrograms on the host's interfaces by pattern, and
node-wide tracing without a pod filter, through the reconciler and the real backend.

Interfaces are veth pairs made by the test in the host's network namespace, with a random prefix
so that nothing else on the machine matches the pattern; they are deleted however the test ends.
"""

from __future__ import annotations

import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from e2e.netdev import MakePair, host_veths, ip
from e2e.tests.programs import EXECS_BY_PID
from node_agent.cgroups import PodCgroupResolver
from node_agent.kernel import host_targets, syscalls
from node_agent.kernel.backend import NODE_TARGET
from node_agent.kernel.bpffs import BpffsBackend
from node_agent.model import NodeProgram, Trust
from node_agent.reconcile import ATTACHED, PassResult, ProgramReport, Reconciler
from tests.kernel.support import bpftool, links_of, wait_until
from tests.unit.builders import cluster_program, parsed

pytestmark = pytest.mark.kernel

TRUST = Trust(system_namespace="bpfleet-system")
TC_COUNTER = """
#include <uapi/linux/pkt_cls.h>
BPF_HASH(packets, u32, u64, 64);
int count(struct __sk_buff *skb) {
    u32 ifindex = skb->ifindex;
    u64 zero = 0, *seen = packets.lookup_or_try_init(&ifindex, &zero);
    if (seen)
        __sync_fetch_and_add(seen, 1);
    return TC_ACT_OK;
}
"""
XDP_PASS = "int pass(struct xdp_md *ctx) { return 2; /* XDP_PASS */ }\n"


@pytest.fixture
def veths() -> Iterator[tuple[str, MakePair]]:
    """(prefix, make(a, b)): veth pairs named <prefix><suffix> on the host, up; all removed at the end."""
    with host_veths() as made:
        yield made


@pytest.fixture
def reconciler(backend: BpffsBackend, tmp_path: Path) -> Reconciler:
    return Reconciler(backend, PodCgroupResolver(tmp_path))


def node_program(attach: dict[str, Any], source: str, function: str) -> NodeProgram:
    obj = cluster_program("host", scope="Node", attach=attach, source=source)
    obj["spec"]["function"] = function
    return parsed(obj, TRUST)


def one_report(result: PassResult) -> ProgramReport:
    [report] = result.reports
    assert report.build_error is None, report.build_error
    return report


def pins(report: ProgramReport) -> set[str]:
    assert report.loaded is not None
    return {p.name for p in (Path(report.loaded.pin_dir) / "links").glob("*")}


def link_target(report: ProgramReport, pin: str) -> int:
    assert report.loaded is not None
    with syscalls.closing_fd(syscalls.obj_get(f"{report.loaded.pin_dir}/links/{pin}")) as fd:
        return syscalls.link_info(fd).target_id


def send_frame(interface: str) -> None:
    """One Ethernet frame out of the interface: it arrives on its veth peer's ingress."""
    frame = b"\xff" * 6 + b"\x02\x00\x00\x00\x00\x01" + b"\x88\xb5" + b"bpfleet".ljust(46, b"\0")
    with socket.socket(socket.AF_PACKET, socket.SOCK_RAW) as sock:
        sock.bind((interface, 0))
        sock.send(frame)


def packets(report: ProgramReport) -> dict[int, int]:
    assert report.loaded is not None
    entries = bpftool("map", "dump", "pinned", f"{report.loaded.pin_dir}/maps/packets")
    return {int(e["formatted"]["key"]): int(e["formatted"]["value"]) for e in entries}


def test_tc_attaches_to_every_host_interface_matching_the_pattern_and_follows_them(
    reconciler, backend, veths
):
    prefix, make = veths
    make("a", "b")
    make(".1", "p")  # a dot: bpffs refuses it in a pin name, the encoding must not
    program = node_program(
        {"type": "Tc", "direction": "Ingress", "interface": f"{prefix}*"}, TC_COUNTER, "count"
    )
    report = one_report(reconciler.run([program], []))
    names = sorted(prefix + s for s in ("a", "b", ".1", "p"))
    assert [(t.name, t.state) for t in report.targets] == [(n, ATTACHED) for n in names]
    assert pins(report) == {host_targets.link_name(n) for n in names}
    assert f"if-{prefix}_2e1" in pins(report)
    for name in names:  # each link sits on its interface, read back from the kernel through its pin
        assert link_target(report, host_targets.link_name(name)) == socket.if_nametoindex(name)
    assert report.loaded is not None
    assert len(links_of(report.loaded.prog_id)) == 4  # bpftool, an observer of its own, agrees

    send_frame(prefix + "a")
    b_index = socket.if_nametoindex(prefix + "b")
    wait_until(lambda: packets(report).get(b_index, 0) >= 1, "the frame counted on the peer's ingress")

    # A second pass changes nothing.
    link_ids = {link["id"] for link in links_of(report.loaded.prog_id)}
    again = one_report(reconciler.run([program], []))
    assert {link["id"] for link in links_of(report.loaded.prog_id)} == link_ids
    assert again.loaded == report.loaded

    # One pair goes, another comes: the next pass follows.
    ip("link", "del", prefix + "a")
    make("c", "d")
    report = one_report(reconciler.run([program], []))
    names = sorted(prefix + s for s in (".1", "p", "c", "d"))
    assert [t.name for t in report.targets] == names
    assert pins(report) == {host_targets.link_name(n) for n in names}
    wait_until(lambda: len(links_of(report.loaded.prog_id)) == 4, "the links of deleted interfaces freed")

    backend.unload(program.ref)
    wait_until(lambda: links_of(report.loaded.prog_id) == [], "every link gone with the version")


def test_an_interface_made_again_under_its_name_gets_a_new_link(reconciler, veths):
    prefix, make = veths
    make("x", "y")
    program = node_program(
        {"type": "Tc", "direction": "Egress", "interface": prefix + "x"}, TC_COUNTER, "count"
    )
    report = one_report(reconciler.run([program], []))
    assert [t.name for t in report.targets] == [prefix + "x"]
    first = socket.if_nametoindex(prefix + "x")
    ip("link", "del", prefix + "x")
    make("x", "y")
    assert socket.if_nametoindex(prefix + "x") != first
    report = one_report(reconciler.run([program], []))
    assert [(t.name, t.state) for t in report.targets] == [(prefix + "x", ATTACHED)]
    assert link_target(report, host_targets.link_name(prefix + "x")) == socket.if_nametoindex(prefix + "x")


def test_xdp_attaches_to_a_host_interface_by_name(reconciler, veths):
    prefix, make = veths
    make("x", "y")
    program = node_program({"type": "Xdp", "mode": "Generic", "interface": prefix + "y"}, XDP_PASS, "pass")
    report = one_report(reconciler.run([program], []))
    assert [(t.name, t.state) for t in report.targets] == [(prefix + "y", ATTACHED)]
    assert report.loaded is not None
    [link] = links_of(report.loaded.prog_id)
    assert link["type"] == "xdp"
    [device] = [d for d in bpftool("net", "show")[0]["xdp"] if d["devname"] == prefix + "y"]
    assert device["id"] == report.loaded.prog_id and device["mode"] == "generic"


def test_node_wide_tracing_counts_a_host_process_with_no_pod_filter(reconciler, backend):
    attach = {"type": "Tracepoint", "name": "sched:sched_process_exec"}
    program = node_program(attach, EXECS_BY_PID, "count_execs")
    report = one_report(reconciler.run([program], []))
    assert [(t.name, t.state) for t in report.targets] == [(NODE_TARGET, ATTACHED)]
    assert report.loaded is not None and "bpfleet_pods" not in report.loaded.maps
    assert pins(report) == {"node"}
    [link] = links_of(report.loaded.prog_id)
    assert link["type"] == "perf_event"

    # A process of the host itself, in no pod: counted under its own pid.
    child = subprocess.Popen(["/bin/true"])
    assert child.wait(timeout=10) == 0
    entries = bpftool("map", "dump", "pinned", f"{report.loaded.pin_dir}/maps/execs")
    counted = {int(e["formatted"]["key"]): int(e["formatted"]["value"]) for e in entries}
    assert counted.get(child.pid) == 1

    again = one_report(reconciler.run([program], []))
    assert [link["id"] for link in links_of(report.loaded.prog_id)] == [link["id"]] and again.targets
    backend.unload(program.ref)
    wait_until(lambda: links_of(report.loaded.prog_id) == [], "the node link gone with the version")
