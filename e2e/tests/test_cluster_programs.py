"""ClusterEbpfPrograms as the agent sees them: node objects in the system namespace, written here the
way the operator writes them (SHARED CONTRACT: programKind, scope, namespaces), served by the real
agent on the real kernel; and node objects the agent must refuse or ignore.
"""

from __future__ import annotations

import hashlib
import secrets
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from bpfleet_api import names, reasons
from e2e.harness import wait_for
from e2e.kube import Kube, bpftool, scratch_namespace
from e2e.netdev import host_veths, ip
from e2e.tests.programs import EXECS_BY_PID
from e2e.tests.test_network import DROPPED_PORT, OPEN_PORT, delivered

REPO = Path(__file__).resolve().parents[2]
SYSTEM = names.system_namespace()  # the harness leaves the agent's default
TC_PORT_DROP = (REPO / "bpf" / "programs" / "tc-port-drop.c").read_text()
TC_PASS = "#include <uapi/linux/pkt_cls.h>\nint pass(struct __sk_buff *skb) { return TC_ACT_OK; }\n"
TRACEPOINT = {"type": "Tracepoint", "name": "sched:sched_process_exec"}

NodeObjects = Callable[..., tuple[str, str]]


@pytest.fixture
def node_objects(kube: Kube, node_a, system_namespace: str) -> Iterator[NodeObjects]:
    """make(program, spec, namespace=SYSTEM, node=node-a) -> (namespace, name): a cluster program's
    node object. Afterwards every one is deleted and waited for (the agent detaches first)."""
    made: list[tuple[str, str]] = []

    def make(program: str, spec: dict[str, Any], namespace: str = SYSTEM, node: str = node_a.name):
        text = spec.pop("source")
        name = f"{program}-{node}-{secrets.token_hex(3)}"
        body = {
            "apiVersion": names.API_VERSION,
            "kind": names.NODE_PROGRAM_KIND,
            "metadata": {
                "name": name,
                "namespace": namespace,
                "labels": {
                    names.NODE_LABEL: names.label_value(node_a.name),
                    names.CLUSTER_PROGRAM_LABEL: names.label_value(program),
                },
            },
            "spec": {
                "programKind": names.CLUSTER_PROGRAM_KIND,
                "programName": program,
                "nodeName": node,
                "source": {"text": text, "sha256": hashlib.sha256(text.encode()).hexdigest()},
                **spec,
            },
        }
        kube.custom.create_namespaced_custom_object(
            names.GROUP, names.VERSION, namespace, names.NODE_PROGRAM_PLURAL, body
        )
        made.append((namespace, name))
        return namespace, name

    try:
        yield make
    finally:
        for namespace, name in made:
            kube.kubectl("delete", "ebpfnodeprogram", "-n", namespace, name, "--wait=true", "--timeout=20s")


def node_object(kube: Kube, namespace: str, name: str) -> dict[str, Any]:
    return kube.custom.get_namespaced_custom_object(
        names.GROUP, names.VERSION, namespace, names.NODE_PROGRAM_PLURAL, name
    )


def reported(kube: Kube, key: tuple[str, str], predicate: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
    """Waits until the agent's status of the node object satisfies `predicate`; returns it."""
    found: dict[str, Any] = {}

    def check() -> bool:
        found.update(node_object(kube, *key).get("status") or {})
        return bool(found) and predicate(found)

    wait_for(f"status of {key[1]}", check, timeout=20)
    return found


def ready(status: dict[str, Any]) -> dict[str, Any]:
    return next(c for c in status.get("conditions", []) if c["type"] == "Ready")


def is_ready(status: dict[str, Any]) -> bool:
    return ready(status)["status"] == "True"


def patch_spec(kube: Kube, key: tuple[str, str], spec: dict[str, Any]) -> None:
    kube.custom.patch_namespaced_custom_object(
        names.GROUP, names.VERSION, key[0], names.NODE_PROGRAM_PLURAL, key[1], {"spec": spec}
    )


def test_host_side_tc_reaches_the_pods_of_its_namespaces_only(kube: Kube, node_a, namespace, node_objects):
    def remove_pods(ns: str) -> None:
        for pod in [p for p in node_a.pods if p.namespace == ns]:
            node_a.delete_pod(pod)

    with scratch_namespace(kube, "t2", remove_pods) as other:
        mine = node_a.create_pod(namespace, "web-1", {"app": "web"}, network=True)
        theirs = node_a.create_pod(other, "web-2", {"app": "web"}, network=True)
        key = node_objects(
            "host-drop",
            {
                "source": TC_PORT_DROP,
                "function": "drop_port",
                "attach": {"type": "Tc", "direction": "Egress", "side": "Host"},
                "parameters": {"PORT": DROPPED_PORT},
                "podSelector": {"matchLabels": {"app": "web"}},
                "namespaces": [namespace],
            },
        )
        status = reported(kube, key, is_ready)
        assert status["pods"] == {"selected": 1, "attached": 1, "failed": 0}
        assert status["podStates"] == [
            {"name": "web-1", "uid": mine.uid, "state": "Attached", "namespace": namespace}
        ]
        assert status["pinPath"].startswith(str(node_a.bpffs_root / "_cluster" / "host-drop"))
        assert delivered(mine, DROPPED_PORT) == 0 and delivered(mine, OPEN_PORT) == 10
        assert delivered(theirs, DROPPED_PORT) == 10

        # The operator widens `namespaces` (a namespace got the selected label): the agent follows.
        patch_spec(kube, key, {"namespaces": [namespace, other]})
        status = reported(kube, key, lambda s: s.get("pods", {}).get("attached") == 2)
        assert {(p["namespace"], p["name"]) for p in status["podStates"]} == {
            (namespace, "web-1"),
            (other, "web-2"),
        }
        assert delivered(theirs, DROPPED_PORT) == 0


def test_node_wide_tracing_counts_every_process_of_the_node(kube: Kube, node_a, node_objects):
    key = node_objects(
        "all-execs",
        {"source": EXECS_BY_PID, "function": "count_execs", "attach": TRACEPOINT, "scope": "Node"},
    )
    status = reported(kube, key, is_ready)
    assert status["pods"] == {"selected": 0, "attached": 0, "failed": 0}
    assert status["targets"] == [{"name": "node", "state": "Attached"}]
    assert "sched:sched_process_exec for every process of this node" in ready(status)["message"]
    assert "bpfleet_pods" not in status["maps"]

    child = subprocess.Popen(["/bin/true"])  # the test's own process: in no pod at all
    assert child.wait(timeout=10) == 0
    entries = bpftool("map", "dump", "pinned", f"{status['pinPath']}/maps/execs") or []
    assert {int(e["formatted"]["key"]): int(e["formatted"]["value"]) for e in entries}.get(child.pid) == 1


@pytest.fixture
def veth_pair() -> Iterator[str]:
    """A veth pair <prefix>a / <prefix>b in the host's network namespace; yields the prefix."""
    with host_veths() as (prefix, make):
        make("a", "b")
        yield prefix


def test_tc_on_node_interfaces_follows_the_interfaces_that_match(kube: Kube, node_a, node_objects, veth_pair):
    prefix = veth_pair
    attach = {"type": "Tc", "direction": "Ingress", "interface": f"{prefix}*"}
    key = node_objects("edge", {"source": TC_PASS, "function": "pass", "attach": attach, "scope": "Node"})
    status = reported(kube, key, is_ready)
    assert [t["name"] for t in status["targets"]] == [f"{prefix}a", f"{prefix}b"]
    assert f"attached to interfaces {prefix}a, {prefix}b" in ready(status)["message"]
    links = Path(status["pinPath"]) / "links"
    assert sorted(p.name for p in links.iterdir()) == [f"if-{prefix}a", f"if-{prefix}b"]

    ip("link", "del", f"{prefix}a")
    status = reported(kube, key, lambda s: s.get("targets") == [])
    assert is_ready(status) and f"no interface of this node matches '{prefix}*'" in ready(status)["message"]
    assert list(links.iterdir()) == []


def test_the_cluster_kind_outside_the_system_namespace_is_refused(
    kube: Kube, node_a, namespace, node_objects
):
    spec = {"source": EXECS_BY_PID, "function": "count_execs", "attach": TRACEPOINT, "scope": "Node"}
    # Labelled for node-a, addressed to node-z: made first, so that the pass that answers the
    # forged one below has it in its cache too (a watch delivers in order).
    elsewhere = node_objects("elsewhere", dict(spec), node="node-z")
    forged = node_objects("forged", dict(spec), namespace=namespace)
    status = reported(kube, forged, lambda s: ready(s)["reason"] == reasons.INVALID_SPEC)
    [failure] = status["failures"]
    assert failure["reason"] == reasons.INVALID_SPEC
    assert "ClusterEbpfProgram" in failure["message"] and SYSTEM in failure["message"]
    assert names.AGENT_FINALIZER not in (node_object(kube, *forged)["metadata"].get("finalizers") or [])
    assert not node_object(kube, *elsewhere).get("status")  # ignored, not served
    assert not (node_a.bpffs_root / "_cluster").exists() or not list(
        (node_a.bpffs_root / "_cluster").glob("*/*")
    )
