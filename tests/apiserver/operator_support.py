"""What the operator tests against a real API server share: the agents' parts (their BpfleetNode
and heartbeat, reporting on their EbpfNodeState), and reads of programs, node states and events."""

from __future__ import annotations

import datetime
import json
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from kubernetes.client import V1Namespace, V1ObjectMeta
from kubernetes.client.exceptions import ApiException

from bpfleet_api import names, patching
from e2e.harness import ManagedProcess, install_crds, operator_process, wait_for
from e2e.kube import Kube


def skb_program(
    namespace: str, name: str, node_labels: dict[str, str], returns: int = 1, **spec: Any
) -> dict[str, Any]:
    """An EbpfProgram of a one-line egress source (`returns` makes another version of it), for every
    pod of its namespace on the nodes labelled `node_labels`; `spec`: more fields (rollout, ...)."""
    return {
        "apiVersion": names.API_VERSION,
        "kind": names.PROGRAM_KIND,
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "source": {"inline": f"int f(struct __sk_buff *skb) {{ return {returns}; }}"},
            "function": "f",
            "attach": {"type": "CgroupSkb", "direction": "Egress"},
            "podSelector": {},
            "nodeSelector": {"matchLabels": node_labels},
            **spec,
        },
    }


def apply_program(kube: Kube, manifest: dict[str, Any]) -> None:
    kube.kubectl("apply", "-f", "-", input=json.dumps(manifest))


def delete_quietly(delete: Any) -> None:
    try:
        delete()
    except ApiException as e:
        if e.status != 404:
            raise


def create_namespace(
    kube: Kube, name: str, labels: dict[str, str] | None = None, annotations: dict[str, str] | None = None
) -> str:
    kube.core.create_namespace(
        V1Namespace(metadata=V1ObjectMeta(name=name, labels=labels, annotations=annotations))
    )
    return name


def remove_namespaces(kube: Kube, namespaces: list[str], play_agents: bool = True) -> None:
    """After a test: the programs of its namespaces deleted and waited for (with `play_agents`, the
    test reporting for every agent meanwhile, so that their entries go), then the namespaces."""
    for namespace in namespaces:
        kube.kubectl("delete", "ebpf", "--all", "-n", namespace, "--wait=false", check=False)
    for namespace in namespaces:

        def gone(namespace: str = namespace) -> bool:
            if play_agents:
                agents_report(kube)
            return not kube.programs(namespace)

        wait_for(f"programs of {namespace} deleted", gone, timeout=30, interval=0.2)
        kube.kubectl("delete", "namespace", namespace, "--wait=false", check=False)


@contextmanager
def namespace_for_a_test(kube: Kube, prefix: str, play_agents: bool = True) -> Iterator[str]:
    """A new namespace, removed with its programs afterwards (remove_namespaces)."""
    name = create_namespace(kube, f"{prefix}-{uuid.uuid4().hex[:8]}")
    try:
        yield name
    finally:
        remove_namespaces(kube, [name], play_agents)


@contextmanager
def operator_running(kube: Kube, directory: Path) -> Iterator[ManagedProcess]:
    """The CRDs applied and the operator started (its logs in `directory`), stopped afterwards."""
    install_crds(kube.kubeconfig)
    process = operator_process(kube.kubeconfig, directory)
    process.start()
    try:
        wait_operator_ready(process.log_path)
        yield process
    finally:
        process.stop()


def heartbeat_at(seconds_ago: float = 0) -> str:
    moment = datetime.datetime.now(datetime.UTC) - datetime.timedelta(seconds=seconds_ago)
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def agent_starts(kube: Kube, node: str, heartbeat: str | None = None, reads_placements: bool = True) -> None:
    """What an agent does when it starts: create its node's BpfleetNode, say when it started and
    (unless it is an older agent) that it reads placements, then heartbeat."""
    body = {"apiVersion": names.API_VERSION, "kind": names.NODE_STATE_KIND, "metadata": {"name": node}}
    kube.custom.create_cluster_custom_object(names.GROUP, names.VERSION, names.NODE_STATE_PLURAL, body)
    agent_restarts(kube, node, reads_placements)
    agent_heartbeats(kube, node, heartbeat or heartbeat_at())


def agent_restarts(kube: Kube, node: str, reads_placements: bool = True) -> None:
    """A new start of the node's agent, of this release or (`reads_placements` False) an older one."""
    started = datetime.datetime.now(datetime.UTC).isoformat(timespec="microseconds")
    status: dict[str, Any] = {"agentStartedAt": started}
    if reads_placements:
        status["readsPlacementsSince"] = started
    patching.merge_patch(kube.custom, names.NODE_STATE_PLURAL, None, node, {"status": status}, status=True)


def agent_heartbeats(kube: Kube, node: str, heartbeat: str) -> None:
    patching.merge_patch(
        kube.custom,
        names.NODE_STATE_PLURAL,
        None,
        node,
        {"status": {"lastHeartbeat": heartbeat}},
        status=True,
    )


def agent_removed(kube: Kube, node: str) -> None:
    """Its BpfleetNode deleted (the agent uninstalled from that node, or its Node collected)."""
    delete_quietly(
        lambda: kube.custom.delete_cluster_custom_object(
            names.GROUP, names.VERSION, names.NODE_STATE_PLURAL, node
        )
    )


def node_state(kube: Kube, node: str) -> dict[str, Any] | None:
    try:
        return kube.custom.get_cluster_custom_object(
            names.GROUP, names.VERSION, names.NODE_STATE_PROGRAMS_PLURAL, node
        )
    except ApiException as e:
        if e.status == 404:
            return None
        raise


def node_states(kube: Kube) -> list[dict[str, Any]]:
    listed = kube.custom.list_cluster_custom_object(
        names.GROUP, names.VERSION, names.NODE_STATE_PROGRAMS_PLURAL
    )
    return list(listed["items"])


def entry_matches(item: dict[str, Any], kind: str, namespace: str, name: str) -> bool:
    return (item["kind"], item["namespace"], item["name"]) == (kind, namespace, name)


def program_versions(
    kube: Kube, namespace: str, program: str, kind: str = names.PROGRAM_KIND
) -> dict[str, str]:
    """node -> the version its agent is asked to run of the program (its spec's entry, else its
    placement's: Kube.node_entries)."""
    found = {}
    for node, entries in kube.node_entries().items():
        for item in entries:
            if entry_matches(item, kind, namespace, program):
                found[node] = item["version"]
    return found


def program_nodes(kube: Kube, namespace: str, program: str, kind: str = names.PROGRAM_KIND) -> list[str]:
    """Nodes whose agent is asked to run the program."""
    return sorted(program_versions(kube, namespace, program, kind))


def ready_report(item: dict[str, Any]) -> dict[str, Any]:
    """An agent's status entry for a spec entry it serves."""
    return {
        **item,
        "servingVersion": item["version"],
        "ready": True,
        "reason": "Attached",
        "message": "attached to 0 of 0 pods",
        "pods": {"selected": 0, "attached": 0, "failed": 0},
    }


def agent_reports(
    kube: Kube,
    node: str,
    report: Any = ready_report,
    keep: tuple[tuple[str, str, str], ...] = (),
    state: dict[str, Any] | None = None,
    entries: list[dict[str, Any]] | None = None,
) -> None:
    """What a node's agent writes after a pass: one status entry per entry it is asked to run (its
    spec's and its placements', Kube.node_entries), made by `report(entry)` (an entry it has
    unloaded is gone); `keep`: (kind, namespace, name) of entries no longer asked for that it still
    reports (not unloaded yet). `state` and `entries`: as read already for many nodes at once."""
    state = state or node_state(kube, node)
    if state is None:
        return
    spec_items = entries if entries is not None else kube.node_entries([state])[node]
    reported = [report(item) for item in spec_items]
    old = ((state.get("status") or {}).get("programs")) or []
    listed = {(i["kind"], i["namespace"], i["name"]) for i in spec_items}
    reported += [
        {**i, "reason": "Unloading", "ready": False}
        for i in old
        if (i["kind"], i["namespace"], i["name"]) in keep
        and (i["kind"], i["namespace"], i["name"]) not in listed
    ]
    status = {"observedGeneration": state["metadata"]["generation"], "programs": reported}
    patching.merge_patch(
        kube.custom, names.NODE_STATE_PROGRAMS_PLURAL, None, node, {"status": status}, status=True
    )


def agents_report(kube: Kube, nodes: list[str] | None = None, report: Any = ready_report) -> None:
    """Every agent (or those on `nodes`) reports: ready on what its spec lists, the rest unloaded."""
    states = node_states(kube)
    entries = kube.node_entries(states)
    for state in states:
        node = state["metadata"]["name"]
        if nodes is None or node in nodes:
            agent_reports(kube, node, report, state=state, entries=entries[node])


def reconciled(program: dict[str, Any] | None) -> bool:
    status = (program or {}).get("status") or {}
    return program is not None and status.get("observedGeneration") == program["metadata"]["generation"]


def ready_message(program: dict[str, Any]) -> str:
    return next(c["message"] for c in program["status"]["conditions"] if c["type"] == "Ready")


def events_of(kube: Kube, namespace: str, name: str) -> list[tuple[str, str]]:
    return [(e.type, e.reason) for e in kube.events(namespace, name)]


def wait_operator_ready(log_path: Path, timeout: float = 90) -> None:
    """Until the operator has reconciled every program once and writes node states (a loaded
    machine takes a while to import it)."""
    wait_for(
        "the operator writing node states",
        lambda: log_path.exists() and "writing node states" in log_path.read_text(errors="replace"),
        timeout,
        0.2,
    )


def version_objects(kube: Kube, label: str, program: str) -> list[dict[str, Any]]:
    """A program's EbpfProgramVersions in every namespace, by its label."""
    listed = kube.custom.list_cluster_custom_object(
        names.GROUP,
        names.VERSION,
        names.VERSION_PLURAL,
        label_selector=f"{label}={names.label_value(program)}",
    )
    return list(listed["items"])


def served_versions(
    kube: Kube, kind: str, namespace: str, program: str, version_namespace: str
) -> dict[str, dict[str, Any]]:
    """node -> the EbpfProgramVersion its EbpfNodeState names for the program (read where the agent
    reads it: `version_namespace`); nodes whose version is missing are left out."""
    found = {}
    for node, name in program_versions(kube, namespace, program, kind).items():
        try:
            found[node] = kube.custom.get_namespaced_custom_object(
                names.GROUP, names.VERSION, version_namespace, names.VERSION_PLURAL, name
            )
        except ApiException as e:
            if e.status != 404:
                raise
    return found
