"""BpffsBackend on the real kernel: compile, pin, attach through cgroup links, adopt, detach, unload.

What the kernel does is checked with bpftool, an observer independent of the backend's own bpf(2)
calls, and with real traffic from processes inside pod cgroups.

Unpinning a link or a program does not free it at once: bpffs drops its reference after an RCU
grace period and the kernel releases links from a workqueue. Where a test looks at the kernel right
after detach()/unload() or after removing a cgroup it therefore waits (briefly, with a deadline) for
the kernel to catch up.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from e2e.podsim import run_in_cgroup
from node_agent import errors
from node_agent.kernel import syscalls
from node_agent.kernel.attach_types import kernel_attach
from node_agent.kernel.backend import LoadedProgram, ProgramBuild, ProgramRef
from node_agent.kernel.bpffs import BpffsBackend
from tests.kernel.support import (
    COUNTER,
    COUNTER_FILE,
    EGRESS,
    INCLUDE_DIR,
    PROGRAMS,
    bpftool,
    links_of,
    project_python,
    wait_until,
)

pytestmark = pytest.mark.kernel

COUNTER_SOURCE = COUNTER.source
DENY_SOURCE = (PROGRAMS / "egress-port-deny.c").read_text()

CONNECT4 = kernel_attach({"type": "CgroupSockAddr", "hook": "Connect4"})
# A dot in the name: bpffs refuses dots, so this also covers the name encoding of the pin path.
COUNTER_REF = ProgramRef("team-a", "traffic.counter", "5d41402abc4b2a76")
DENY_REF = ProgramRef("team-a", "no-port", "7d793037a0760186")

# What skb->len counts at cgroup egress for a UDP datagram over IPv4 besides the payload.
IPV4_UDP_HEADERS = 20 + 8

# --- observing the kernel --------------------------------------------------------------------------


def cgroup_progs(cgroup: Path) -> list[dict[str, Any]]:
    """Programs attached directly to the cgroup, per `bpftool cgroup show`."""
    return bpftool("cgroup", "show", str(cgroup))


def attached_ids(cgroup: Path) -> list[int]:
    return sorted(prog["id"] for prog in cgroup_progs(cgroup))


def prog_exists(prog_id: int) -> bool:
    proc = subprocess.run(
        ["bpftool", "prog", "show", "id", str(prog_id)], capture_output=True, timeout=30, check=False
    )
    return proc.returncode == 0


def _u64s(hex_bytes: list[str]) -> list[int]:
    raw = bytes(int(b, 16) for b in hex_bytes)
    return [int.from_bytes(raw[i : i + 8], sys.byteorder) for i in range(0, len(raw), 8)]


def traffic(loaded: LoadedProgram) -> dict[int, tuple[int, int]]:
    """The `traffic` map, read with bpftool through its pin: pod cgroup id -> (packets, bytes)."""
    entries = bpftool("map", "dump", "pinned", f"{loaded.pin_dir}/maps/traffic")
    found = {}
    for entry in entries:
        [key] = _u64s(entry["key"])
        packets, nbytes = _u64s(entry["value"])
        found[key] = (packets, nbytes)
    return found


def denied_count(loaded: LoadedProgram) -> int:
    [entry] = bpftool("map", "dump", "pinned", f"{loaded.pin_dir}/maps/denied")
    [count] = _u64s(entry["value"])
    return count


# --- processes inside a pod ------------------------------------------------------------------------

_CONNECT_SCRIPT = """
import socket, sys
sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
sock.settimeout(5)
try:
    sock.connect(("127.0.0.1", int(sys.argv[1])))
    print(0)
except OSError as exc:
    print(exc.errno)
"""

_SEND_UDP_SCRIPT = """
import socket, sys
port, count, size = (int(arg) for arg in sys.argv[1:])
with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
    for _ in range(count):
        sock.sendto(b"x" * size, ("127.0.0.1", port))
"""


def _python(script: str, *args: object) -> list[str]:
    # -I -S: the stdlib only, so a helper in a pod starts fast.
    return [sys.executable, "-I", "-S", "-c", script, *(str(arg) for arg in args)]


def connect_from(cgroup: Path, port: int) -> int:
    """TCP connect to 127.0.0.1:port from a process in the cgroup: 0, or the errno it failed with."""
    result = run_in_cgroup(_python(_CONNECT_SCRIPT, port), cgroup, timeout=30)
    assert result.returncode == 0, result.stderr
    return int(result.stdout)


@contextlib.contextmanager
def listening() -> Iterator[int]:
    """A TCP listener of the test process (outside every pod cgroup); yields its port."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(16)
        yield listener.getsockname()[1]


@contextlib.contextmanager
def udp_sink() -> Iterator[Callable[[Path, int, int], None]]:
    """send(cgroup, count, size): datagrams from a process in the cgroup, all checked to arrive."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as receiver:
        receiver.bind(("127.0.0.1", 0))
        receiver.settimeout(5)
        port = receiver.getsockname()[1]

        def send(cgroup: Path, count: int, size: int) -> None:
            result = run_in_cgroup(_python(_SEND_UDP_SCRIPT, port, count, size), cgroup, timeout=30)
            assert result.returncode == 0, result.stderr
            assert [len(receiver.recv(65536)) for _ in range(count)] == [size] * count

        yield send


# --- tests -----------------------------------------------------------------------------------------


def test_traffic_counter_counts_each_pods_egress_under_its_pod_cgroup_id(backend, pod_cgroups):
    a, b = pod_cgroups(), pod_cgroups()
    loaded = backend.load(COUNTER_REF, COUNTER)
    assert loaded.maps == ("traffic",)
    assert Path(loaded.pin_dir) == backend.root / "team-a" / "traffic_counter" / COUNTER_REF.version

    att_a = backend.attach(COUNTER_REF, a.uid, a.pod, EGRESS)
    att_b = backend.attach(COUNTER_REF, b.uid, b.pod, EGRESS)

    assert (att_a.target_id, att_b.target_id) == (a.cgroup_id, b.cgroup_id)
    assert att_a.link_id != att_b.link_id
    for pod in (a, b):
        [ours] = [prog for prog in cgroup_progs(pod.pod) if prog["id"] == loaded.prog_id]
        assert ours["attach_type"] == "cgroup_inet_egress"
        assert ours["attach_flags"] == "multi"
    assert traffic(loaded) == {}

    with udp_sink() as send:
        send(a.container, 5, 100)
        assert traffic(loaded) == {a.cgroup_id: (5, 5 * (100 + IPV4_UDP_HEADERS))}

        send(b.container, 3, 40)
        assert traffic(loaded) == {
            a.cgroup_id: (5, 5 * (100 + IPV4_UDP_HEADERS)),
            b.cgroup_id: (3, 3 * (40 + IPV4_UDP_HEADERS)),
        }


def test_egress_port_deny_refuses_its_port_only_and_not_after_detach(backend, pod_cgroups):
    pod = pod_cgroups()
    with listening() as denied_port, listening() as other_port:
        assert connect_from(pod.container, denied_port) == 0  # without the program it connects

        build = ProgramBuild(DENY_SOURCE, "deny_connect4", CONNECT4, (("PORT", str(denied_port)),))
        loaded = backend.load(DENY_REF, build)
        backend.attach(DENY_REF, pod.uid, pod.pod, CONNECT4)
        assert [(p["id"], p["attach_type"]) for p in cgroup_progs(pod.pod)] == [
            (loaded.prog_id, "cgroup_inet4_connect")
        ]

        assert connect_from(pod.container, denied_port) == errno.EPERM
        assert connect_from(pod.container, other_port) == 0
        assert denied_count(loaded) == 1

        backend.detach(DENY_REF, pod.uid)
        assert backend.attachments(DENY_REF) == {}
        wait_until(lambda: attached_ids(pod.pod) == [], "detached from the cgroup")
        assert connect_from(pod.container, denied_port) == 0
        assert denied_count(loaded) == 1


_FIRST_AGENT_SCRIPT = """
import json, sys
from pathlib import Path
from node_agent.kernel.attach_types import kernel_attach
from node_agent.kernel.backend import ProgramBuild, ProgramRef
from node_agent.kernel.bpffs import BpffsBackend

root, include_dir, source_file, namespace, name, version, *pods = sys.argv[1:]
egress = kernel_attach({"type": "CgroupSkb", "direction": "Egress"})
ref = ProgramRef(namespace, name, version)
backend = BpffsBackend(Path(root), include_dirs=(Path(include_dir),))
loaded = backend.load(ref, ProgramBuild(Path(source_file).read_text(), "count_packets", egress))
links = {}
for pod in pods:
    uid, _, cgroup = pod.partition("=")
    links[uid] = backend.attach(ref, uid, Path(cgroup), egress).link_id
print(json.dumps({"progId": loaded.prog_id, "links": links}))
"""


def test_a_restarted_agent_adopts_programs_and_links_and_attach_is_idempotent(
    backend, bpffs_root, pod_cgroups
):
    a, b = pod_cgroups(), pod_cgroups()
    # The first agent loads and attaches, then exits: only the pins keep anything alive.
    first = project_python(
        _FIRST_AGENT_SCRIPT,
        *(bpffs_root, INCLUDE_DIR, COUNTER_FILE),
        *(COUNTER_REF.namespace, COUNTER_REF.name, COUNTER_REF.version),
        *(f"{pod.uid}={pod.pod}" for pod in (a, b)),
        timeout=180,
    )
    assert first.returncode == 0, first.stderr
    started = json.loads(first.stdout)
    prog_id, links = started["progId"], started["links"]

    adopted = BpffsBackend(bpffs_root, include_dirs=(INCLUDE_DIR,))
    pin_dir = str(bpffs_root / "team-a" / "traffic_counter" / COUNTER_REF.version)
    expected = LoadedProgram(COUNTER_REF, prog_id, pin_dir, ("traffic",))
    assert adopted.loaded() == {COUNTER_REF: expected}
    attachments = adopted.attachments(COUNTER_REF)
    assert {uid: (att.link_id, att.target_id) for uid, att in attachments.items()} == {
        a.uid: (links[a.uid], a.cgroup_id),
        b.uid: (links[b.uid], b.cgroup_id),
    }
    assert all(att.live for att in attachments.values())
    assert attached_ids(a.pod) == attached_ids(b.pod) == [prog_id]

    # Reconciling again changes nothing: no second compile, no second link.
    assert adopted.load(COUNTER_REF, COUNTER) == expected
    assert adopted.attach(COUNTER_REF, a.uid, a.pod, EGRESS) == attachments[a.uid]
    assert attached_ids(a.pod) == [prog_id]
    assert [link["id"] for link in links_of(prog_id) if link["cgroup_id"] == a.cgroup_id] == [links[a.uid]]
    assert adopted.attachments(COUNTER_REF) == attachments

    # The data plane ran on through the restart.
    with udp_sink() as send:
        send(a.container, 2, 10)
    assert traffic(expected) == {a.cgroup_id: (2, 2 * (10 + IPV4_UDP_HEADERS))}


FOREIGN_SOURCE = """
BPF_ARRAY(seen, u64, 1);

int foreign_count(struct __sk_buff *skb)
{
    int zero = 0;
    u64 *count = seen.lookup(&zero);

    if (count)
        __sync_fetch_and_add(count, 1);
    return 1;
}
"""


@contextlib.contextmanager
def foreign_program_on(cgroup: Path) -> Iterator[tuple[int, Callable[[], int]]]:
    """Another tool's program, attached the classic way (BPF_PROG_ATTACH with BPF_F_ALLOW_MULTI).

    Yields its program id and a reader of how many packets it has seen.
    """
    from bcc import BPF, BPFAttachType

    bpf = BPF(text=FOREIGN_SOURCE.encode())
    try:
        fn = bpf.load_func(b"foreign_count", BPF.CGROUP_SKB)
        cgroup_fd = os.open(cgroup, os.O_RDONLY | os.O_DIRECTORY)
        try:
            BPF.attach_func(fn, cgroup_fd, BPFAttachType.CGROUP_INET_EGRESS, syscalls.BPF_F_ALLOW_MULTI)
            try:
                yield syscalls.prog_info(fn.fd).id, lambda: int(bpf[b"seen"][0].value)
            finally:
                BPF.detach_func(fn, cgroup_fd, BPFAttachType.CGROUP_INET_EGRESS)
        finally:
            os.close(cgroup_fd)
    finally:
        bpf.cleanup()


def test_a_foreign_program_on_the_cgroup_survives_attach_detach_and_unload(backend, pod_cgroups):
    pod = pod_cgroups()

    def flags_by_id() -> dict[int, str]:
        return {prog["id"]: prog["attach_flags"] for prog in cgroup_progs(pod.pod)}

    with foreign_program_on(pod.pod) as (foreign_id, foreign_seen), udp_sink() as send:
        assert flags_by_id() == {foreign_id: "multi"}
        loaded = backend.load(COUNTER_REF, COUNTER)

        backend.attach(COUNTER_REF, pod.uid, pod.pod, EGRESS)
        assert flags_by_id() == {foreign_id: "multi", loaded.prog_id: "multi"}
        send(pod.container, 3, 10)
        assert foreign_seen() == 3  # both run
        assert traffic(loaded) == {pod.cgroup_id: (3, 3 * (10 + IPV4_UDP_HEADERS))}

        backend.detach(COUNTER_REF, pod.uid)
        wait_until(lambda: flags_by_id() == {foreign_id: "multi"}, "only the foreign program attached")

        backend.attach(COUNTER_REF, pod.uid, pod.pod, EGRESS)
        assert flags_by_id() == {foreign_id: "multi", loaded.prog_id: "multi"}

        backend.unload(COUNTER_REF)
        wait_until(lambda: flags_by_id() == {foreign_id: "multi"}, "only the foreign program attached")
        send(pod.container, 4, 10)
        assert foreign_seen() == 3 + 4  # still attached and still running


def test_unload_removes_the_versions_pins_and_empty_parents_and_detaches_it(backend, bpffs_root, pod_cgroups):
    a, b = pod_cgroups(), pod_cgroups()
    v1 = COUNTER_REF
    v2 = ProgramRef(COUNTER_REF.namespace, COUNTER_REF.name, "aaf4c61ddcc5e8a2")
    old = backend.load(v1, COUNTER)
    new = backend.load(v2, COUNTER)
    backend.attach(v1, a.uid, a.pod, EGRESS)
    backend.attach(v1, b.uid, b.pod, EGRESS)
    backend.attach(v2, a.uid, a.pod, EGRESS)
    assert attached_ids(a.pod) == sorted([old.prog_id, new.prog_id])
    assert {p.name for p in (Path(old.pin_dir) / "links").iterdir()} == {a.uid, b.uid}

    backend.unload(v1)

    assert not Path(old.pin_dir).exists()
    program_dir = Path(old.pin_dir).parent
    assert sorted(p.name for p in program_dir.iterdir()) == [v2.version]  # the other version stays
    assert backend.loaded() == {v2: new}
    assert backend.attachments(v1) == {}
    wait_until(lambda: attached_ids(a.pod) == [new.prog_id], "only the remaining version on pod a")
    wait_until(lambda: attached_ids(b.pod) == [], "nothing on pod b")
    wait_until(lambda: not prog_exists(old.prog_id), "the unloaded program freed by the kernel")
    assert prog_exists(new.prog_id)

    backend.unload(v2)

    assert list(bpffs_root.iterdir()) == []  # program and namespace directories went with it
    assert backend.loaded() == {}
    wait_until(lambda: attached_ids(a.pod) == [], "nothing on pod a")
    wait_until(lambda: not prog_exists(new.prog_id), "the unloaded program freed by the kernel")


def test_a_version_whose_pins_went_behind_its_back_is_not_attached_from_a_kept_fd(backend, pod_cgroups):
    a, b = pod_cgroups(), pod_cgroups()
    loaded = backend.load(COUNTER_REF, COUNTER)
    backend.attach(COUNTER_REF, a.uid, a.pod, EGRESS)  # the program's fd is kept from here on
    shutil.rmtree(loaded.pin_dir)  # someone else's rm: links and program unpinned

    assert COUNTER_REF not in backend.loaded()  # the agent's look at bpffs (each full pass)
    wait_until(lambda: not prog_exists(loaded.prog_id), "the program freed: no fd of ours holds it")
    with pytest.raises(errors.AttachFailed):
        backend.attach(COUNTER_REF, b.uid, b.pod, EGRESS)
    assert attached_ids(b.pod) == []
    reloaded = backend.load(COUNTER_REF, COUNTER)  # what the next pass does
    backend.attach(COUNTER_REF, b.uid, b.pod, EGRESS)
    assert attached_ids(b.pod) == [reloaded.prog_id]


def test_a_removed_pod_cgroup_leaves_a_dead_link_and_a_recreated_one_can_be_attached(backend, pod_cgroups):
    pod = pod_cgroups()
    loaded = backend.load(COUNTER_REF, COUNTER)
    first = backend.attach(COUNTER_REF, pod.uid, pod.pod, EGRESS)
    old_cgroup_id = pod.cgroup_id
    assert first.live

    pod.remove()

    wait_until(lambda: not backend.attachments(COUNTER_REF)[pod.uid].live, "reported dead")
    dead = backend.attachments(COUNTER_REF)[pod.uid]
    assert (dead.link_id, dead.target_id, dead.live) == (first.link_id, 0, False)
    assert COUNTER_REF in backend.loaded()

    pod.recreate()
    assert pod.cgroup_id != old_cgroup_id
    again = backend.attach(COUNTER_REF, pod.uid, pod.pod, EGRESS)

    assert again.live
    assert again.target_id == pod.cgroup_id
    assert again.link_id != first.link_id
    assert backend.attachments(COUNTER_REF) == {pod.uid: again}
    assert attached_ids(pod.pod) == [loaded.prog_id]
    # The dead link was released, not leaked.
    wait_until(lambda: [link["id"] for link in links_of(loaded.prog_id)] == [again.link_id], "one link left")
    with udp_sink() as send:
        send(pod.container, 1, 10)
    assert traffic(loaded) == {pod.cgroup_id: (1, 10 + IPV4_UDP_HEADERS)}


# --- build errors ----------------------------------------------------------------------------------


def _line_of(source: str, text: str) -> int:
    return next(number for number, line in enumerate(source.splitlines(), 1) if text in line)


def assert_nothing_pinned(backend: BpffsBackend) -> None:
    root = backend.root
    # Look before loaded() does: it deletes staging directories it comes across.
    assert [p for p in root.rglob("*") if not p.is_dir()] == []  # pins are files
    assert list(root.glob("*/*/*")) == []  # no version or staging directory
    assert backend.loaded() == {}


_BROKEN_COUNTER = COUNTER_SOURCE.replace(
    "__u64 pod = bpfleet_skb_pod_cgroup_id(skb);", "__u64 pod = no_such_variable;"
)


@pytest.mark.parametrize(
    ("source", "function", "attach", "line", "diagnostic"),
    [
        pytest.param(
            _BROKEN_COUNTER,
            "count_packets",
            EGRESS,
            _line_of(_BROKEN_COUNTER, "no_such_variable"),
            "use of undeclared identifier 'no_such_variable'",
            id="undeclared-identifier",
        ),
        pytest.param(
            DENY_SOURCE,  # without the PORT define its #error fires
            "deny_connect4",
            CONNECT4,
            _line_of(DENY_SOURCE, "#error"),
            "egress-port-deny needs the parameter PORT",
            id="error-directive",
        ),
    ],
)
def test_a_c_error_raises_compile_error_naming_the_users_line(
    backend, source, function, attach, line, diagnostic
):
    with pytest.raises(errors.CompileError) as raised:
        backend.load(COUNTER_REF, ProgramBuild(source, function, attach))

    message = str(raised.value)
    assert re.search(rf"^program\.c:{line}:\d+: error: .*{re.escape(diagnostic)}", message, re.M), message
    assert "/virtual/main.c" not in message
    assert_nothing_pinned(backend)


def test_a_program_the_verifier_rejects_raises_verifier_rejected_with_its_explanation(backend):
    source = textwrap.dedent("""
        int read_scalar(struct __sk_buff *skb)
        {
            long address = skb->len;
            return *(int *)address;
        }
    """)
    with pytest.raises(errors.VerifierRejected) as raised:
        backend.load(COUNTER_REF, ProgramBuild(source, "read_scalar", EGRESS))

    assert re.search(r"^R\d+ invalid mem access 'scalar'$", str(raised.value), re.M), str(raised.value)
    assert_nothing_pinned(backend)


def test_an_unknown_function_raises_function_not_found(backend):
    with pytest.raises(errors.FunctionNotFound, match="'count_bytes'"):
        backend.load(COUNTER_REF, ProgramBuild(COUNTER_SOURCE, "count_bytes", EGRESS))

    assert_nothing_pinned(backend)
