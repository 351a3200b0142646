"""The compile cgroups a killed agent left: the next agent of its node kills what still runs in
them and removes them at its start; with a prefix others may share, only old empty ones go.

Real cgroups of this host (v2 with the memory controller, else the v1 memory and cpu
hierarchies), each test with its own node name, and a fixture that removes them all.
"""

from __future__ import annotations

import secrets
import signal
import subprocess
from collections.abc import Iterator

import pytest

from node_agent.kernel.compile_cgroup import CgroupPlacement, CompileLimits, node_prefix
from tests.kernel.support import cgroups_named, remove_cgroups

pytestmark = pytest.mark.kernel


@pytest.fixture
def prefix() -> Iterator[str]:
    """The prefix of a node of this test alone; its cgroups and their processes go at the end."""
    name = node_prefix(f"takeover-{secrets.token_hex(4)}")
    try:
        yield name
    finally:
        remove_cgroups(name)


def placement(prefix: str, owned: bool) -> CgroupPlacement:
    found = CgroupPlacement.detect(prefix, owned)
    if found is None:
        pytest.fail("this host offers no memory cgroup for compile workers (neither v2 nor v1)")
    return found


def test_node_prefixes_differ_by_node_and_keep_the_shared_prefix():
    assert node_prefix("node-a") != node_prefix("node-b")
    assert node_prefix("node-a") == node_prefix("node-a")
    assert node_prefix("node-a").startswith("bpfleet-compile-")


def test_an_agent_takes_over_its_predecessors_cgroups_and_the_worker_still_in_one(prefix: str):
    predecessor = placement(prefix, owned=True)
    idle = predecessor.create(CompileLimits())
    busy = predecessor.create(CompileLimits())
    # A worker its killed agent left finishing a compile nobody will read.
    worker = subprocess.Popen(["sleep", "300"])
    try:
        busy.add(worker.pid)
        assert worker.pid in busy.pids()

        placement(prefix, owned=True)  # the next agent of the node, at its start

        assert worker.wait(timeout=10) == -signal.SIGKILL
        assert cgroups_named(prefix) == [], [str(d) for d in idle.dirs() + busy.dirs()]
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait()


def test_a_shared_prefix_keeps_a_recent_cgroup_another_backend_just_made(prefix: str):
    first = placement(prefix, owned=False)
    made = first.create(CompileLimits())

    placement(prefix, owned=False)  # another backend of this host starts

    assert all(d.is_dir() for d in made.dirs())
