"""Uprobes and uretprobes through the full path: pods run a binary in roots of their own, one probe
per distinct file counts the calls of the selected pods only, and deleting leaves no trace."""

from __future__ import annotations

from pathlib import Path

import pytest

from e2e.harness import wait_for
from e2e.kube import Kube, bpftool, cgroup_id
from e2e.podsim import PROBE_SYMBOL, PROBE_TARGET, build_probe_root
from e2e.tests.programs import apply_ready, builtin, delete_leaves_no_trace

PROGRAM = "uprobe-call-counter"


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Two container roots, each with its own copy of /bin/target: two images, two files."""
    return (
        build_probe_root(tmp_path_factory.mktemp("image-a")),
        build_probe_root(tmp_path_factory.mktemp("image-b")),
    )


def calls(pin_path: str) -> dict[int, int]:
    entries = bpftool("map", "dump", "pinned", f"{pin_path}/maps/calls") or []
    return {int(e["formatted"]["key"]): int(e["formatted"]["value"]) for e in entries}


def links_of(prog_id: int) -> list[dict]:
    return [link for link in bpftool("link", "show") or [] if link["prog_id"] == prog_id]


def call(pod, times: int) -> None:
    result = pod.run([PROBE_TARGET, "call", str(times)], timeout=10)
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize(("kind", "function"), [("Uprobe", "count_calls"), ("Uretprobe", "count_returns")])
def test_calls_of_selected_pods_are_counted_once_each(
    kube: Kube, node_a, namespace: str, images: tuple[Path, Path], kind: str, function: str
):
    image_a, image_b = images
    web_1 = node_a.create_pod(namespace, "web-1", {"app": "web"}, root=image_a)
    web_2 = node_a.create_pod(namespace, "web-2", {"app": "web"}, root=image_b)
    db = node_a.create_pod(namespace, "db-1", {"app": "db"}, root=image_a)  # same file as web-1
    attach = {"type": kind, "binary": PROBE_TARGET, "symbol": PROBE_SYMBOL}
    status = apply_ready(kube, node_a, namespace, builtin(PROGRAM, function, attach))
    assert status["pods"] == {"selected": 2, "attached": 2, "failed": 0}
    links = links_of(status["programId"])
    assert [link["type"] for link in links] == ["perf_event", "perf_event"]  # one per file

    for pod in (web_1, web_2, db):
        call(pod, 5)
    assert calls(status["pinPath"]) == {cgroup_id(web_1.pod_cgroup): 5, cgroup_id(web_2.pod_cgroup): 5}

    delete_leaves_no_trace(kube, node_a, namespace, PROGRAM, [web_1, web_2, db])
    gone = {link["id"] for link in links}
    wait_for(
        "the probes' links gone", lambda: not gone & {link["id"] for link in bpftool("link", "show") or []}
    )


def test_a_symbol_the_binary_lacks_fails_the_pod_by_name(
    kube: Kube, node_a, namespace: str, images: tuple[Path, Path]
):
    web = node_a.create_pod(namespace, "web-1", {"app": "web"}, root=images[0])
    attach = {"type": "Uprobe", "binary": PROBE_TARGET, "symbol": "bpfleet_nope"}
    kube.apply(namespace, builtin(PROGRAM, "count_calls", attach))
    wait_for("AttachFailed", lambda: kube.condition(namespace, PROGRAM)["reason"] == "AttachFailed")
    [failure] = kube.program(namespace, PROGRAM)["status"]["failures"]
    assert (failure["pod"], failure["reason"]) == ("web-1", "AttachFailed")
    assert failure["message"] == "no symbol bpfleet_nope in /bin/target"
    delete_leaves_no_trace(kube, node_a, namespace, PROGRAM, [web])
