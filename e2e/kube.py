"""What the end-to-end suites, the demo and the benchmark read from the API server and the kernel."""

from __future__ import annotations

import json
import os
import subprocess
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import kubernetes
from kubernetes.client.exceptions import ApiException

from bpfleet_api import names
from bpfleet_api.rest import RestClient
from bpfleet_operator.agents import reads_placements
from e2e.harness import kubectl, wait_for
from node_agent.intake import Entry, parse_entries
from node_agent.model import Trust
from node_agent.placements import merged, placed_entries


class Kube:
    """A kubeconfig and the calls made with it. Writes go through kubectl, as a user's would."""

    def __init__(self, kubeconfig: Path) -> None:
        self.kubeconfig = kubeconfig
        self.api = kubernetes.config.new_client_from_config(config_file=str(kubeconfig))
        self.core = kubernetes.client.CoreV1Api(self.api)
        self.custom = kubernetes.client.CustomObjectsApi(self.api)
        self.rest = RestClient.load(str(kubeconfig))  # the agent's client
        # Each node's bpffs root, where known: a status entry read through node_programs() then
        # also says where its version is pinned (pinPath, maps), read from the kernel.
        self.bpffs_roots: dict[str, Path] = {}

    def kubectl(self, *args: str, input: str | None = None, check: bool = True) -> str:
        return kubectl(self.kubeconfig, *args, input=input, check=check)

    def apply(self, namespace: str, manifest: str | dict[str, Any] | Path) -> str:
        if isinstance(manifest, Path):
            manifest = manifest.read_text()
        if isinstance(manifest, dict):
            manifest = json.dumps(manifest)  # JSON is YAML, and no string in it reads as a number
        return self.kubectl("apply", "-n", namespace, "-f", "-", input=manifest)

    def program(self, namespace: str, name: str) -> dict[str, Any] | None:
        return _unless_missing(
            lambda: self.custom.get_namespaced_custom_object(
                names.GROUP, names.VERSION, namespace, names.PROGRAM_PLURAL, name
            )
        )

    def programs(self, namespace: str) -> list[dict[str, Any]]:
        listed = self.custom.list_namespaced_custom_object(
            names.GROUP, names.VERSION, namespace, names.PROGRAM_PLURAL
        )
        return list(listed["items"])

    def node_states(self) -> list[dict[str, Any]]:
        """Every node's EbpfNodeState: what it should run (spec) and runs (status)."""
        listed = self.custom.list_cluster_custom_object(
            names.GROUP, names.VERSION, names.NODE_STATE_PROGRAMS_PLURAL
        )
        return list(listed["items"])

    def placements(self) -> list[dict[str, Any]]:
        listed = self.custom.list_cluster_custom_object(names.GROUP, names.VERSION, names.PLACEMENT_PLURAL)
        return list(listed["items"])

    def node_entries(self, states: list[dict[str, Any]] | None = None) -> dict[str, list[dict[str, Any]]]:
        """node -> what its agent is asked to run, as the agent reads it (node_agent.placements): its
        EbpfNodeState's spec entries and, where the agent reads placements, the entries of the
        placements its Node's labels match (the spec's win)."""
        states = self.node_states() if states is None else states
        placements = self.placements()
        labels = {n.metadata.name: n.metadata.labels or {} for n in self.core.list_node().items}
        agents = self.custom.list_cluster_custom_object(names.GROUP, names.VERSION, names.NODE_STATE_PLURAL)
        readers = {a["metadata"]["name"] for a in agents["items"] if reads_placements(a.get("status") or {})}
        found = {}
        for state in states:
            node = state["metadata"]["name"]
            own, _ = parse_entries(state)
            placed: list[Entry] = []
            if node in readers and node in labels:
                placed, _ = placed_entries(placements, labels[node], Trust())
            found[node] = [_entry_item(e) for e in merged(placed, own)]
        return found

    def node_programs(
        self, namespace: str, program: str, kind: str = names.PROGRAM_KIND
    ) -> list[dict[str, Any]]:
        """The program on each node whose agent is asked to run it (node_entries) or reports it:
        {"node", "spec": its entry or None, "status": its status entry or None}. Empty once no
        node should run it and no agent reports it any more."""
        found = []
        states = self.node_states()
        entries = self.node_entries(states)
        for state in states:
            spec = _entry(entries[state["metadata"]["name"]], kind, namespace, program)
            status = _entry((state.get("status") or {}).get("programs"), kind, namespace, program)
            node = state["metadata"]["name"]
            if status is not None and node in self.bpffs_roots:
                pins = names.CLUSTER_PIN_NAMESPACE if kind == names.CLUSTER_PROGRAM_KIND else namespace
                # bpffs refuses dots: the agent writes them as "_".
                program_dir = self.bpffs_roots[node] / pins / program.replace(".", "_")
                status.update(_pinned(program_dir, status.get("programId")))
            if spec is not None or status is not None:
                found.append({"node": node, "spec": spec, "status": status})
        return sorted(found, key=lambda f: f["node"])

    def node_program(self, namespace: str, program: str, node: str) -> dict[str, Any]:
        [found] = [np for np in self.node_programs(namespace, program) if np["node"] == node]
        return found

    def program_versions(self, namespace: str) -> list[dict[str, Any]]:
        listed = self.custom.list_namespaced_custom_object(
            names.GROUP, names.VERSION, namespace, names.VERSION_PLURAL
        )
        return list(listed["items"])

    def condition(self, namespace: str, name: str, kind: str = "Ready") -> dict[str, Any] | None:
        """The condition, if the status speaks of the current generation."""
        return current_condition(self.program(namespace, name), kind)

    def is_ready(self, namespace: str, name: str) -> bool:
        cond = self.condition(namespace, name)
        return cond is not None and cond["status"] == "True"

    def runs_agent(self, node: str) -> bool:
        """Whether the node's agent has published its BpfleetNode: only then does the operator
        target the node, so a program applied before would be Ready on no node."""
        try:
            state = self.custom.get_cluster_custom_object(
                names.GROUP, names.VERSION, names.NODE_STATE_PLURAL, node
            )
        except ApiException as e:
            if e.status == 404:
                return False
            raise
        return bool((state.get("status") or {}).get("agentStartedAt"))

    def forget_agent(self, node: str) -> None:
        """Deletes the node's BpfleetNode, so that runs_agent() waits for the agent started next."""
        self.kubectl("delete", names.NODE_STATE_PLURAL, node, "--ignore-not-found", check=False)

    # -- ClusterEbpfPrograms: cluster-scoped, their versions in the system namespace ---------------

    def cluster_program(self, name: str) -> dict[str, Any] | None:
        return _unless_missing(
            lambda: self.custom.get_cluster_custom_object(
                names.GROUP, names.VERSION, names.CLUSTER_PROGRAM_PLURAL, name
            )
        )

    def cluster_node_programs(self, name: str) -> list[dict[str, Any]]:
        return self.node_programs("", name, names.CLUSTER_PROGRAM_KIND)

    def cluster_node_program(self, name: str, node: str) -> dict[str, Any]:
        [found] = [np for np in self.cluster_node_programs(name) if np["node"] == node]
        return found

    def cluster_condition(self, name: str, kind: str = "Ready") -> dict[str, Any] | None:
        return current_condition(self.cluster_program(name), kind)

    def cluster_is_ready(self, name: str) -> bool:
        cond = self.cluster_condition(name)
        return cond is not None and cond["status"] == "True"

    def events(self, namespace: str, name: str) -> list[Any]:
        return [e for e in self.core.list_namespaced_event(namespace).items if e.involved_object.name == name]


def _unless_missing(get: Callable[[], dict[str, Any]]) -> dict[str, Any] | None:
    """What `get` reads, or None where the object does not exist."""
    try:
        return get()
    except ApiException as e:
        if e.status == 404:
            return None
        raise


def _entry_item(entry: Entry) -> dict[str, Any]:
    key = entry.key
    return {
        "kind": key.kind,
        "namespace": key.namespace,
        "name": key.name,
        "generation": entry.generation,
        "version": entry.version,
    }


def _entry(listed: Any, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
    for entry in listed or []:
        if (entry.get("kind"), entry.get("namespace"), entry.get("name")) == (kind, namespace, name):
            return dict(entry)
    return None


def _pinned(program_dir: Path, prog_id: int | None) -> dict[str, Any]:
    """Where the version that runs as `prog_id` is pinned, and its maps' names: the API does not
    carry them (a node's one status object holds counts only)."""
    for version_dir in sorted(program_dir.glob("*")) if prog_id else []:
        if version_dir.name.startswith("staging-") or not (version_dir / "prog").exists():
            continue
        shown = subprocess.run(
            ["bpftool", "-j", "prog", "show", "pinned", str(version_dir / "prog")],
            capture_output=True,
            text=True,
        )
        if shown.returncode == 0 and json.loads(shown.stdout).get("id") == prog_id:
            maps = (
                sorted(m.name for m in (version_dir / "maps").iterdir())
                if (version_dir / "maps").exists()
                else []
            )
            return {"pinPath": str(version_dir), "maps": maps}
    return {}


def current_condition(program: dict[str, Any] | None, kind: str) -> dict[str, Any] | None:
    """A program's condition of that type, if its status speaks of the current generation."""
    if program is None:
        return None
    status = program.get("status") or {}
    if status.get("observedGeneration") != program["metadata"]["generation"]:
        return None
    return next((c for c in status.get("conditions", []) if c["type"] == kind), None)


@contextmanager
def scratch_namespace(
    kube: Kube,
    prefix: str = "t",
    remove_pods: Callable[[str], None] = lambda namespace: None,
    timeout: float = 30,
) -> Iterator[str]:
    """A namespace for one test. Afterwards its programs are deleted and waited for while the agents
    still run (so they detach), then `remove_pods(namespace)`, then the namespace itself."""
    name = f"{prefix}-{uuid.uuid4().hex[:8]}"
    kube.kubectl("create", "namespace", name)
    try:
        yield name
    finally:
        for program in kube.programs(name):
            kube.kubectl("delete", "ebpfprogram", "-n", name, program["metadata"]["name"], "--wait=false")
        try:
            wait_for("programs deleted", lambda: not kube.programs(name), timeout=timeout, interval=0.2)
        finally:
            remove_pods(name)
            kube.kubectl("delete", "namespace", name, "--wait=false")


def bpftool(*args: str) -> Any:
    result = subprocess.run(["bpftool", "-j", *args], capture_output=True, text=True, check=True)
    return json.loads(result.stdout) if result.stdout.strip() else None


def kernel_has_kprobes() -> bool:
    """Whether this kernel was built with kprobes, from its symbols rather than from the agent."""
    with open("/proc/kallsyms") as symbols:
        return any(line.rstrip().endswith(" register_kprobe") for line in symbols)


def cgroup_programs(cgroup: Path) -> list[dict[str, Any]]:
    """What `bpftool cgroup show` lists as attached directly to the cgroup."""
    return bpftool("cgroup", "show", str(cgroup)) or []


def cgroup_id(cgroup: Path) -> int:
    """A cgroup v2 directory's id is its inode number."""
    return os.stat(cgroup).st_ino


def traffic_counts(map_pin: Path) -> dict[int, dict[str, int]]:
    """The pod-traffic-counter map: pod cgroup id -> {packets, bytes}."""
    counts = {}
    for entry in bpftool("map", "dump", "pinned", str(map_pin)) or []:
        formatted = entry["formatted"]  # decoded through the map's BTF
        counts[int(formatted["key"])] = formatted["value"]
    return counts
