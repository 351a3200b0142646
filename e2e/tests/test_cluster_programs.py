"""ClusterEbpfPrograms as the agent sees them: entries of its node's EbpfNodeState naming versions in
the system namespace, written here the way the operator writes them (SHARED CONTRACT: programKind,
scope, namespaces, contentHash), served by the real agent on the real kernel; and entries and
versions the agent must refuse or ignore. The operator is stopped meanwhile: these entries are no
program's, and it would rightly remove them.
"""

from __future__ import annotations

import hashlib
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes.client.exceptions import ApiException

from bpfleet_api import names, reasons, versions
from e2e.harness import ManagedProcess, wait_for
from e2e.kube import Kube, bpftool, scratch_namespace
from e2e.netdev import host_veths, ip
from e2e.tests.programs import EXECS_BY_PID
from e2e.tests.test_network import DROPPED_PORT, OPEN_PORT, delivered

REPO = Path(__file__).resolve().parents[2]
SYSTEM = names.system_namespace()  # the harness leaves the agent's default
TC_PORT_DROP = (REPO / "bpf" / "programs" / "tc-port-drop.c").read_text()
TC_PASS = "#include <uapi/linux/pkt_cls.h>\nint pass(struct __sk_buff *skb) { return TC_ACT_OK; }\n"
TRACEPOINT = {"type": "Tracepoint", "name": "sched:sched_process_exec"}

Key = tuple[str, str, str]  # an entry's (kind, namespace, name)


class NodeEntries:
    """Writes entries into node-a's EbpfNodeState spec, and their version objects, as the operator
    would; undoes it all afterwards."""

    def __init__(self, kube: Kube, node: str) -> None:
        self.kube, self.node = kube, node
        self.keys: list[Key] = []
        self.versions: list[tuple[str, str]] = []

    def __call__(
        self,
        program: str,
        spec: dict[str, Any],
        version_namespace: str = SYSTEM,
        kind: str = names.CLUSTER_PROGRAM_KIND,
        entry_namespace: str = "",
    ) -> Key:
        """A version of a ClusterEbpfProgram `program` (in the system namespace unless told
        otherwise) and the entry that names it; returns the entry's key."""
        spec = dict(spec)
        text = spec.pop("source")
        body = versions.with_hash(
            {
                "programKind": names.CLUSTER_PROGRAM_KIND,
                "programName": program,
                "source": {"text": text, "sha256": hashlib.sha256(text.encode()).hexdigest()},
                **spec,
            }
        )
        name = names.version_name(kind, entry_namespace, program, body["contentHash"])
        try:
            self.kube.custom.create_namespaced_custom_object(
                names.GROUP,
                names.VERSION,
                version_namespace,
                names.VERSION_PLURAL,
                {
                    "apiVersion": names.API_VERSION,
                    "kind": names.VERSION_KIND,
                    "metadata": {"name": name},
                    "spec": body,
                },
            )
        except ApiException as e:
            if e.status != 409:  # the same content is the same version: already there
                raise
        self.versions.append((version_namespace, name))
        key = (kind, entry_namespace, program)
        entry = {
            "kind": kind,
            "namespace": entry_namespace,
            "name": program,
            "generation": 1,
            "version": name,
        }
        self._set_entries([e for e in self._entries() if _key(e) != key] + [entry])
        if key not in self.keys:
            self.keys.append(key)
        return key

    def status(self, key: Key) -> dict[str, Any] | None:
        """The agent's status entry (with where it is pinned, from the kernel)."""
        kind, namespace, name = key
        found = [
            np["status"] for np in self.kube.node_programs(namespace, name, kind) if np["node"] == self.node
        ]
        return found[0] if found else None

    def remove_all(self) -> None:
        self._set_entries([e for e in self._entries() if _key(e) not in self.keys])
        wait_for(
            "the agent reporting none of them",
            lambda: all(self.status(k) is None for k in self.keys),
            timeout=20,
        )
        for namespace, name in self.versions:
            self.kube.kubectl("delete", "ebpfprogramversion", "-n", namespace, name, "--ignore-not-found")

    def _state(self) -> dict[str, Any]:
        return self.kube.custom.get_cluster_custom_object(
            names.GROUP, names.VERSION, names.NODE_STATE_PROGRAMS_PLURAL, self.node
        )

    def _entries(self) -> list[dict[str, Any]]:
        return list((self._state().get("spec") or {}).get("programs") or [])

    def _set_entries(self, entries: list[dict[str, Any]]) -> None:
        self.kube.custom.patch_cluster_custom_object(
            names.GROUP,
            names.VERSION,
            names.NODE_STATE_PROGRAMS_PLURAL,
            self.node,
            {"spec": {"programs": entries}},
            _content_type="application/merge-patch+json",
        )


def _key(entry: dict[str, Any]) -> Key:
    return (entry["kind"], entry["namespace"], entry["name"])


@pytest.fixture
def node_entries(
    kube: Kube, node_a, system_namespace: str, operator: ManagedProcess
) -> Iterator[NodeEntries]:
    wait_for(
        "node-a's EbpfNodeState",
        lambda: any(s["metadata"]["name"] == node_a.name for s in kube.node_states()),
        timeout=20,
    )
    operator.stop()
    entries = NodeEntries(kube, node_a.name)
    try:
        yield entries
    finally:
        try:
            entries.remove_all()
        finally:
            operator.start()


def reported(entries: NodeEntries, key: Key, predicate: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
    """Waits until the agent's status entry satisfies `predicate`; returns it."""
    found: dict[str, Any] = {}

    def check() -> bool:
        found.clear()
        found.update(entries.status(key) or {})
        return bool(found) and predicate(found)

    wait_for(f"status of {key[2]}", check, timeout=20)
    return found


def is_ready(status: dict[str, Any]) -> bool:
    return status.get("ready") is True


def test_host_side_tc_reaches_the_pods_of_its_namespaces_only(kube: Kube, node_a, namespace, node_entries):
    def remove_pods(ns: str) -> None:
        for pod in [p for p in node_a.pods if p.namespace == ns]:
            node_a.delete_pod(pod)

    with scratch_namespace(kube, "t2", remove_pods) as other:
        mine = node_a.create_pod(namespace, "web-1", {"app": "web"}, network=True)
        theirs = node_a.create_pod(other, "web-2", {"app": "web"}, network=True)
        host_drop = {
            "source": TC_PORT_DROP,
            "function": "drop_port",
            "attach": {"type": "Tc", "direction": "Egress", "side": "Host"},
            "parameters": {"PORT": DROPPED_PORT},
            "podSelector": {"matchLabels": {"app": "web"}},
        }
        key = node_entries("host-drop", {**host_drop, "namespaces": [namespace]})
        status = reported(node_entries, key, is_ready)
        assert status["pods"] == {"selected": 1, "attached": 1, "failed": 0}
        assert status["pinPath"].startswith(str(node_a.bpffs_root / "_cluster" / "host-drop"))
        assert delivered(mine, DROPPED_PORT) == 0 and delivered(mine, OPEN_PORT) == 10
        assert delivered(theirs, DROPPED_PORT) == 10

        # The operator widens `namespaces` (a namespace got the selected label): a new version
        # object, the same compiled program; the agent follows.
        node_entries("host-drop", {**host_drop, "namespaces": [namespace, other]})
        status = reported(node_entries, key, lambda s: s.get("pods", {}).get("attached") == 2)
        assert status["pods"] == {"selected": 2, "attached": 2, "failed": 0}
        assert delivered(theirs, DROPPED_PORT) == 0


def test_node_wide_tracing_counts_every_process_of_the_node(kube: Kube, node_a, node_entries):
    key = node_entries(
        "all-execs",
        {"source": EXECS_BY_PID, "function": "count_execs", "attach": TRACEPOINT, "scope": "Node"},
    )
    status = reported(node_entries, key, is_ready)
    assert status["pods"] == {"selected": 0, "attached": 0, "failed": 0}
    assert status["targets"] == [{"name": "node", "state": "Attached"}]
    assert "sched:sched_process_exec for every process of this node" in status["message"]
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


def test_tc_on_node_interfaces_follows_the_interfaces_that_match(kube: Kube, node_a, node_entries, veth_pair):
    prefix = veth_pair
    attach = {"type": "Tc", "direction": "Ingress", "interface": f"{prefix}*"}
    key = node_entries("edge", {"source": TC_PASS, "function": "pass", "attach": attach, "scope": "Node"})
    status = reported(node_entries, key, is_ready)
    assert [t["name"] for t in status["targets"]] == [f"{prefix}a", f"{prefix}b"]
    assert f"attached to interfaces {prefix}a, {prefix}b" in status["message"]
    links = Path(status["pinPath"]) / "links"
    assert sorted(p.name for p in links.iterdir()) == [f"if-{prefix}a", f"if-{prefix}b"]

    ip("link", "del", f"{prefix}a")
    status = reported(node_entries, key, lambda s: "targets" in s and s["targets"] == [])
    assert is_ready(status) and f"no interface of this node matches '{prefix}*'" in status["message"]
    assert list(links.iterdir()) == []


def test_the_cluster_kind_outside_the_system_namespace_is_refused(
    kube: Kube, node_a, namespace, node_entries
):
    spec = {"source": EXECS_BY_PID, "function": "count_execs", "attach": TRACEPOINT, "scope": "Node"}
    # A cluster kind's version in a tenant's namespace, named by a cluster entry: the agent reads a
    # cluster entry's version from the system namespace only, so it finds none.
    unread = node_entries("forged", dict(spec), version_namespace=namespace)
    status = reported(node_entries, unread, lambda s: s["reason"] == reasons.SOURCE_NOT_FOUND)
    assert SYSTEM in status["message"] and not status["ready"]
    # The same version named by an entry of the tenant's namespace: refused, it is a cluster kind's.
    tenant = node_entries(
        "forged", dict(spec), version_namespace=namespace, kind=names.PROGRAM_KIND, entry_namespace=namespace
    )
    status = reported(node_entries, tenant, lambda s: s["reason"] == reasons.INVALID_SPEC)
    [failure] = status["failures"]
    assert failure["reason"] == reasons.INVALID_SPEC and "ClusterEbpfProgram" in failure["message"]
    assert "keeps running" not in failure["message"]
    assert not (node_a.bpffs_root / "_cluster").exists() or not list(
        (node_a.bpffs_root / "_cluster").glob("*/*")
    )
    assert not (node_a.bpffs_root / namespace).exists() or not list(
        (node_a.bpffs_root / namespace).glob("*/*")
    )
