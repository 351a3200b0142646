"""The operator for real, against the control plane, without agents: where the versions of each kind
go, what they say, how they follow Namespaces, that long names work, and that deleting a program
cleans up. The test plays the agents' one part here: reporting on their EbpfNodeState what they run
(ready on what the spec lists, the rest unloaded)."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes.client import V1Node, V1ObjectMeta
from kubernetes.client.exceptions import ApiException

from bpfleet_api import names, versions
from e2e.harness import ManagedProcess, operator_process, wait_for
from e2e.kube import Kube
from e2e.tests.programs import cluster_program, ebpf_program
from tests.apiserver.operator_support import (
    agent_removed,
    agent_starts,
    agents_report,
    create_namespace,
    delete_quietly,
    events_of,
    program_nodes,
    ready_message,
    reconciled,
    remove_namespaces,
    served_versions,
    version_objects,
    wait_operator_ready,
)

pytestmark = pytest.mark.apiserver

RUN = uuid.uuid4().hex[:6]
SYSTEM_NAMESPACE = f"bpfleet-sys-{RUN}"
NODE_LABEL = "bpfleet.test/tenancy"  # on this module's Nodes only: its programs target them alone
TEAM_LABEL = "bpfleet.test/team"
SOURCE = "int f(struct __sk_buff *skb) { return 1; }"
# 253 characters, the longest Kubernetes name: a node and programs called that must still work.
LONG = ("n" * 62 + ".") * 3 + "n" * 57 + f"-{RUN}"
assert len(LONG) == 253


@pytest.fixture(scope="module")
def cluster(crds: Kube, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Kube]:
    """CRDs, the system namespace, two Nodes that run an agent (a BpfleetNode) and the operator.
    The played agents trust the same system namespace as the operator (Kube.node_entries)."""
    kube = crds
    patch = pytest.MonkeyPatch()
    patch.setenv(names.SYSTEM_NAMESPACE_ENV, SYSTEM_NAMESPACE)
    nodes = [f"tenancy-{RUN}-a", f"tenancy-{RUN}-b"]
    create_namespace(kube, SYSTEM_NAMESPACE)
    for node in nodes:
        kube.core.create_node(V1Node(metadata=V1ObjectMeta(name=node, labels={NODE_LABEL: RUN})))
        agent_starts(kube, node)
    process = operator_process(kube.kubeconfig, tmp_path_factory.mktemp("tenancy-operator"))
    # No fast resync: following Namespaces and Nodes must come from their watches.
    process.env[names.SYSTEM_NAMESPACE_ENV] = SYSTEM_NAMESPACE
    # The test's agents heartbeat once: they must not go silent while the module runs.
    process.env["BPFLEET_AGENT_SILENCE_SECONDS"] = "3600"
    process.start()
    try:
        wait_operator_ready(process.log_path)
        yield kube
    finally:
        try:
            remove_programs(kube, process)
        finally:
            process.stop()
            for node in [*nodes, LONG]:
                delete_quietly(lambda node=node: kube.core.delete_node(node))
                agent_removed(kube, node)
            kube.kubectl("delete", "namespace", SYSTEM_NAMESPACE, "--wait=false", check=False)
            patch.undo()


@pytest.fixture
def namespaces(cluster: Kube) -> Iterator[list[str]]:
    """Namespaces a test creates (append to the list); deleted afterwards, programs first."""
    created: list[str] = []
    yield created
    remove_namespaces(cluster, created)


def remove_programs(kube: Kube, process: ManagedProcess) -> None:
    """Deletes what this module made and plays the agents until it is gone."""
    for name in cluster_programs(kube):
        kube.kubectl("delete", "cebpf", name, "--wait=false", check=False)
    if process.alive:
        wait_for("cluster programs deleted", lambda: agents_report(kube) or not cluster_programs(kube), 30)


def cluster_programs(kube: Kube) -> list[str]:
    listed = kube.custom.list_cluster_custom_object(names.GROUP, names.VERSION, names.CLUSTER_PROGRAM_PLURAL)
    return [p["metadata"]["name"] for p in listed["items"] if p["metadata"]["name"].endswith(RUN)]


def program_spec(**spec: Any) -> dict[str, Any]:
    """SOURCE on this module's Nodes, with `spec` over it."""
    return {
        "source": {"inline": SOURCE},
        "function": "f",
        "attach": {"type": "CgroupSkb", "direction": "Egress"},
        "nodeSelector": {"matchLabels": {NODE_LABEL: RUN}},
        **spec,
    }


def apply_cluster(kube: Kube, name: str, **spec: Any) -> dict[str, Any]:
    manifest = cluster_program(name, program_spec(**spec))
    kube.kubectl("apply", "-f", "-", input=json.dumps(manifest))
    return manifest


def tenant_manifest(name: str, **spec: Any) -> dict[str, Any]:
    return ebpf_program(name, program_spec(**{"podSelector": {}, **spec}))


def cluster_versions(kube: Kube, name: str) -> list[dict[str, Any]]:
    """The version each node runs of a ClusterEbpfProgram, by node name."""
    served = served_versions(kube, names.CLUSTER_PROGRAM_KIND, "", name, SYSTEM_NAMESPACE)
    return [served[n] for n in sorted(served)]


def tenant_versions(kube: Kube, namespace: str, name: str) -> list[dict[str, Any]]:
    served = served_versions(kube, names.PROGRAM_KIND, namespace, name, namespace)
    return [served[n] for n in sorted(served)]


def test_a_cluster_program_follows_its_namespace_selector_and_cleans_up(cluster: Kube, namespaces: list[str]):
    team = f"team-{RUN}"
    first = create_namespace(cluster, f"web-{RUN}", labels={TEAM_LABEL: team})
    other = create_namespace(cluster, f"db-{RUN}")
    namespaces += [first, other]
    name = f"web-egress-{RUN}"
    apply_cluster(
        cluster,
        name,
        podSelector={"matchLabels": {"app": "web"}},
        namespaceSelector={"matchLabels": {TEAM_LABEL: team}},
    )

    def made(expected: list[str]) -> bool:
        found = cluster_versions(cluster, name)
        return len(found) == 2 and all(v["spec"].get("namespaces") == expected for v in found)

    wait_for("a version in the system namespace, on both nodes", lambda: made([first]), timeout=30)
    [version] = {v["metadata"]["uid"]: v for v in cluster_versions(cluster, name)}.values()
    uid = cluster.cluster_program(name)["metadata"]["uid"]
    meta, spec = version["metadata"], version["spec"]
    assert meta["namespace"] == SYSTEM_NAMESPACE
    assert meta["name"] == names.version_name(names.CLUSTER_PROGRAM_KIND, "", name, spec["contentHash"])
    assert meta["labels"] == {names.CLUSTER_PROGRAM_LABEL: name}
    assert [(r["kind"], r["uid"]) for r in meta["ownerReferences"]] == [(names.CLUSTER_PROGRAM_KIND, uid)]
    assert (spec["programKind"], spec["programName"], spec["scope"]) == (
        names.CLUSTER_PROGRAM_KIND,
        name,
        "Pods",
    )
    assert spec["podSelector"] == {"matchLabels": {"app": "web"}}
    wait_for("its status", lambda: reconciled(cluster.cluster_program(name)), timeout=20)
    assert cluster.cluster_program(name)["status"]["nodes"]["targeted"] == 2

    # A namespace labelled later, and a new one, join the list; unlabelling one leaves it.
    cluster.kubectl("label", "namespace", other, f"{TEAM_LABEL}={team}")
    wait_for("a relabelled namespace joins", lambda: made(sorted([first, other])), timeout=30)
    third = create_namespace(cluster, f"api-{RUN}", labels={TEAM_LABEL: team})
    namespaces.append(third)
    wait_for("a new namespace joins", lambda: made(sorted([first, other, third])), timeout=30)
    cluster.kubectl("label", "namespace", first, f"{TEAM_LABEL}-")
    wait_for("an unlabelled namespace leaves", lambda: made(sorted([other, third])), timeout=30)

    # Events about a cluster-scoped object go to the default namespace.
    wait_for("Accepted event", lambda: ("Normal", "Accepted") in events_of(cluster, "default", name), 20)

    agents_report(cluster)  # the agents run it: their states list it
    cluster.kubectl("delete", "cebpf", name, "--wait=false")
    wait_for(
        "its entries removed",
        lambda: program_nodes(cluster, "", name, names.CLUSTER_PROGRAM_KIND) == [],
        timeout=20,
    )
    assert cluster.cluster_program(name) is not None  # held until the agents have unloaded
    wait_for(
        "the program gone once the agents unloaded",
        lambda: agents_report(cluster) or cluster.cluster_program(name) is None,
        timeout=30,
    )
    wait_for(
        "its versions collected with it",
        lambda: not version_objects(cluster, names.CLUSTER_PROGRAM_LABEL, name),
        timeout=60,
        interval=0.5,
    )
    wait_for("Deleted event", lambda: ("Normal", "Deleted") in events_of(cluster, "default", name), 20)


def test_a_node_wide_cluster_program_has_no_pod_filter(cluster: Kube):
    name = f"host-tc-{RUN}"
    apply_cluster(
        cluster,
        name,
        scope="Node",
        source={"builtin": "tc-port-drop"},
        function="drop_port",
        attach={"type": "Tc", "direction": "Ingress", "interface": "eth*"},
        parameters={"PORT": 23},
        maxMapBytes=1 << 20,
    )
    wait_for("a version on both nodes", lambda: len(cluster_versions(cluster, name)) == 2, 30)
    for version in cluster_versions(cluster, name):
        spec = version["spec"]
        assert (spec["scope"], spec["attach"]["interface"], spec["maxMapBytes"]) == ("Node", "eth*", 1 << 20)
        assert "podSelector" not in spec and "namespaces" not in spec
        assert spec["source"]["origin"] == "builtin:tc-port-drop"


def test_a_cluster_program_reads_its_config_map_from_the_system_namespace_only(
    cluster: Kube, namespaces: list[str]
):
    # From the system namespace: read, rolled out.
    config_map = f"probe-{RUN}"
    cluster.kubectl(
        "create", "configmap", config_map, "-n", SYSTEM_NAMESPACE, f"--from-literal=main.c={SOURCE}"
    )
    name = f"from-config-map-{RUN}"
    ref = {"name": config_map, "namespace": SYSTEM_NAMESPACE, "key": "main.c"}
    apply_cluster(cluster, name, podSelector={}, source={"configMapRef": ref})
    wait_for("a version on both nodes", lambda: len(cluster_versions(cluster, name)) == 2, 30)
    source = cluster_versions(cluster, name)[0]["spec"]["source"]
    assert (source["text"], source["origin"]) == (SOURCE, f"configMap:{SYSTEM_NAMESPACE}/{config_map}/main.c")

    # From a tenant's namespace: whoever may edit ConfigMaps there would write what runs on every
    # node, so it is refused and nothing reaches a node.
    tools = create_namespace(cluster, f"tools-{RUN}")
    namespaces.append(tools)
    cluster.kubectl("create", "configmap", "probe", "-n", tools, f"--from-literal=main.c={SOURCE}")
    tenant_written = f"tenant-source-{RUN}"
    apply_cluster(
        cluster,
        tenant_written,
        podSelector={},
        source={"configMapRef": {"name": "probe", "namespace": tools, "key": "main.c"}},
    )

    def refusal() -> str:
        status = (cluster.cluster_program(tenant_written) or {}).get("status") or {}
        ready = next((c for c in status.get("conditions", []) if c["type"] == "Ready"), {})
        return ready.get("message", "") if ready.get("reason") == "InvalidSpec" else ""

    wait_for("tenant-written source refused", refusal, 30)
    assert f"only from the bpfleet system namespace ({SYSTEM_NAMESPACE})" in refusal()
    assert program_nodes(cluster, "", tenant_written, names.CLUSTER_PROGRAM_KIND) == []
    assert version_objects(cluster, names.CLUSTER_PROGRAM_LABEL, tenant_written) == []


def test_the_namespace_annotation_caps_tenant_maps_and_a_bad_one_is_reported(
    cluster: Kube, namespaces: list[str]
):
    namespace = create_namespace(
        cluster, f"capped-{RUN}", annotations={names.MAX_MAP_BYTES_ANNOTATION: "1048576"}
    )
    namespaces.append(namespace)
    cluster.apply(namespace, tenant_manifest("counter"))

    def caps() -> list[Any]:
        return [v["spec"].get("maxMapBytes") for v in tenant_versions(cluster, namespace, "counter")]

    wait_for("a capped version on both nodes", lambda: caps() == [1048576, 1048576], timeout=30)
    cluster.kubectl(
        "annotate", "namespace", namespace, "--overwrite", f"{names.MAX_MAP_BYTES_ANNOTATION}=lots"
    )
    wait_for("the bad cap ignored", lambda: caps() == [None, None], timeout=30)
    wait_for(
        "a Warning event",
        lambda: ("Warning", "InvalidAnnotation") in events_of(cluster, namespace, "counter"),
        timeout=20,
    )

    def says_why() -> bool:
        program = cluster.program(namespace, "counter")
        return reconciled(program) and "'lots', which is not a positive integer" in ready_message(program)

    wait_for("the Ready message says why", says_why, timeout=20)
    assert cluster.program(namespace, "counter")["status"]["failures"] == []


def test_programs_and_nodes_of_253_characters_get_valid_names(cluster: Kube, namespaces: list[str]):
    cluster.core.create_node(V1Node(metadata=V1ObjectMeta(name=LONG, labels={f"{NODE_LABEL}-long": RUN})))
    agent_starts(cluster, LONG)
    namespace = create_namespace(cluster, f"long-{RUN}")
    namespaces.append(namespace)
    on_long_node = {"matchLabels": {f"{NODE_LABEL}-long": RUN}}
    cluster.apply(namespace, tenant_manifest(LONG, nodeSelector=on_long_node))
    apply_cluster(cluster, LONG, podSelector={}, nodeSelector=on_long_node)
    try:
        for served in (
            lambda: tenant_versions(cluster, namespace, LONG),
            lambda: cluster_versions(cluster, LONG),
        ):
            wait_for("a version on the long node", lambda served=served: len(served()) == 1, 30)
            [version] = served()
            assert len(version["metadata"]["name"]) <= 63
            assert version["spec"]["programName"] == LONG
        state = cluster.custom.get_cluster_custom_object(
            names.GROUP, names.VERSION, names.NODE_STATE_PROGRAMS_PLURAL, LONG
        )
        assert state["spec"]["nodeName"] == LONG
        # Their placements: names of at most 253 characters, labels of at most 63.
        placed = {p["spec"]["kind"]: p["metadata"] for p in cluster.placements() if p["spec"]["name"] == LONG}
        assert sorted(placed) == [names.CLUSTER_PROGRAM_KIND, names.PROGRAM_KIND]
        for meta in placed.values():
            assert len(meta["name"]) <= 253 and all(len(v) <= 63 for v in meta["labels"].values())
        for read in (lambda: cluster.program(namespace, LONG), lambda: cluster.cluster_program(LONG)):
            wait_for("its status", lambda read=read: reconciled(read()), timeout=20)
            status = read()["status"]
            assert (status["failures"], status["nodes"]["targeted"]) == ([], 1)
    finally:
        cluster.kubectl("delete", "cebpf", LONG, "--wait=false", check=False)


def test_garbage_collection_follows_a_cluster_scoped_owner(cluster: Kube):
    """The backstop: a version the operator no longer sees goes with its ClusterEbpfProgram."""
    name = f"collected-{RUN}"
    apply_cluster(cluster, name, podSelector={})
    wait_for("a version on both nodes", lambda: len(cluster_versions(cluster, name)) == 2, 30)
    owners = cluster_versions(cluster, name)[0]["metadata"]["ownerReferences"]
    # Unlabelled, so that only the garbage collector can find it; owned as the operator owns its own.
    orphan = {
        "apiVersion": names.API_VERSION,
        "kind": names.VERSION_KIND,
        "metadata": {"name": f"orphan-{RUN}", "ownerReferences": owners},
        "spec": versions.with_hash(
            {
                "programKind": names.CLUSTER_PROGRAM_KIND,
                "programName": name,
                "source": {"text": SOURCE, "sha256": "0"},
                "function": "f",
                "attach": {"type": "CgroupSkb", "direction": "Egress"},
            }
        ),
    }
    cluster.custom.create_namespaced_custom_object(
        names.GROUP, names.VERSION, SYSTEM_NAMESPACE, names.VERSION_PLURAL, orphan
    )

    def collected() -> bool:
        try:
            cluster.custom.get_namespaced_custom_object(
                names.GROUP, names.VERSION, SYSTEM_NAMESPACE, names.VERSION_PLURAL, f"orphan-{RUN}"
            )
        except ApiException as e:
            return e.status == 404
        return False

    assert not collected()
    cluster.kubectl("delete", "cebpf", name, "--wait=false")
    wait_for("the program gone", lambda: agents_report(cluster) or cluster.cluster_program(name) is None, 30)

    wait_for("the garbage collector removes the orphan", collected, timeout=60, interval=0.5)
