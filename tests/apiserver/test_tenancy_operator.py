"""The operator for real, against the control plane, without agents: where node objects of each kind
go, what they say, how they follow Namespaces, that long names work, that old ones are adopted, and
that deleting a program cleans up. The test plays the agents' one part here: it drops their
finalizer from node objects being deleted."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes.client import V1Node, V1ObjectMeta
from kubernetes.client.exceptions import ApiException

from bpfleet_api import names
from e2e.harness import ManagedProcess, operator_process, wait_for
from e2e.kube import Kube
from e2e.tests.programs import cluster_program, ebpf_program
from tests.apiserver.operator_support import (
    agent_removed,
    agent_starts,
    agents_detach,
    create_namespace,
    delete_quietly,
    events_of,
    node_objects,
    ready_message,
    reconciled,
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
    """CRDs, the system namespace, two Nodes that run an agent (a BpfleetNode) and the operator."""
    kube = crds
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


@pytest.fixture
def namespaces(cluster: Kube) -> Iterator[list[str]]:
    """Namespaces a test creates (append to the list); deleted afterwards, programs first."""
    created: list[str] = []
    yield created
    for namespace in created:
        cluster.kubectl("delete", "ebpf", "--all", "-n", namespace, "--wait=false", check=False)
    for namespace in created:
        wait_for(
            f"programs of {namespace} deleted",
            lambda namespace=namespace: agents_detach(cluster) or not cluster.programs(namespace),
            timeout=30,
            interval=0.2,
        )
        cluster.kubectl("delete", "namespace", namespace, "--wait=false", check=False)


def remove_programs(kube: Kube, process: ManagedProcess) -> None:
    """Deletes what this module made and plays the agents until it is gone."""
    for name in cluster_programs(kube):
        kube.kubectl("delete", "cebpf", name, "--wait=false", check=False)
    if process.alive:
        wait_for("cluster programs deleted", lambda: agents_detach(kube) or not cluster_programs(kube), 30)


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
        objs = node_objects(cluster, names.CLUSTER_PROGRAM_LABEL, name)
        return len(objs) == 2 and all(o["spec"].get("namespaces") == expected for o in objs)

    wait_for("node objects in the system namespace", lambda: made([first]), timeout=30)
    objs = node_objects(cluster, names.CLUSTER_PROGRAM_LABEL, name)
    uid = cluster.cluster_program(name)["metadata"]["uid"]
    for obj, node in zip(objs, [f"tenancy-{RUN}-a", f"tenancy-{RUN}-b"], strict=True):
        meta, spec = obj["metadata"], obj["spec"]
        assert meta["namespace"] == SYSTEM_NAMESPACE
        assert meta["name"] == names.node_program_name(names.CLUSTER_PROGRAM_KIND, "", name, node)
        assert meta["labels"] == {names.NODE_LABEL: node, names.CLUSTER_PROGRAM_LABEL: name}
        assert [(r["kind"], r["uid"]) for r in meta["ownerReferences"]] == [(names.CLUSTER_PROGRAM_KIND, uid)]
        assert (spec["programKind"], spec["scope"], spec["nodeName"]) == (
            names.CLUSTER_PROGRAM_KIND,
            "Pods",
            node,
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

    cluster.kubectl("delete", "cebpf", name, "--wait=false")
    wait_for(
        "node objects deleted",
        lambda: all(
            o["metadata"].get("deletionTimestamp")
            for o in node_objects(cluster, names.CLUSTER_PROGRAM_LABEL, name)
        ),
        timeout=20,
    )
    assert cluster.cluster_program(name) is not None  # held until the agents have detached
    wait_for(
        "the program and its node objects gone",
        lambda: (
            agents_detach(cluster)
            or (
                cluster.cluster_program(name) is None
                and not node_objects(cluster, names.CLUSTER_PROGRAM_LABEL, name)
            )
        ),
        timeout=30,
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
    wait_for("node objects", lambda: len(node_objects(cluster, names.CLUSTER_PROGRAM_LABEL, name)) == 2, 30)
    for obj in node_objects(cluster, names.CLUSTER_PROGRAM_LABEL, name):
        spec = obj["spec"]
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
    wait_for("node objects", lambda: len(node_objects(cluster, names.CLUSTER_PROGRAM_LABEL, name)) == 2, 30)
    source = node_objects(cluster, names.CLUSTER_PROGRAM_LABEL, name)[0]["spec"]["source"]
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
    assert node_objects(cluster, names.CLUSTER_PROGRAM_LABEL, tenant_written) == []


def test_the_namespace_annotation_caps_tenant_maps_and_a_bad_one_is_reported(
    cluster: Kube, namespaces: list[str]
):
    namespace = create_namespace(
        cluster, f"capped-{RUN}", annotations={names.MAX_MAP_BYTES_ANNOTATION: "1048576"}
    )
    namespaces.append(namespace)
    cluster.apply(namespace, tenant_manifest("counter"))

    def caps() -> list[Any]:
        return [
            o["spec"].get("maxMapBytes")
            for o in node_objects(cluster, names.PROGRAM_LABEL, "counter")
            if o["metadata"]["namespace"] == namespace
        ]

    wait_for("capped node objects", lambda: caps() == [1048576, 1048576], timeout=30)
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
        for label in (names.PROGRAM_LABEL, names.CLUSTER_PROGRAM_LABEL):
            wait_for(
                f"node objects by {label}",
                lambda label=label: len(node_objects(cluster, label, LONG)) == 1,
                30,
            )
            [obj] = node_objects(cluster, label, LONG)
            assert len(obj["metadata"]["name"]) <= 63
            assert obj["metadata"]["labels"][names.NODE_LABEL] == names.label_value(LONG)
            assert (obj["spec"]["programName"], obj["spec"]["nodeName"]) == (LONG, LONG)
        for read in (lambda: cluster.program(namespace, LONG), lambda: cluster.cluster_program(LONG)):
            wait_for("its status", lambda read=read: reconciled(read()), timeout=20)
            status = read()["status"]
            assert (status["failures"], status["nodes"]["targeted"]) == ([], 1)
    finally:
        cluster.kubectl("delete", "cebpf", LONG, "--wait=false", check=False)


def test_node_objects_named_the_old_way_are_adopted(cluster: Kube, namespaces: list[str]):
    namespace = create_namespace(cluster, f"upgraded-{RUN}")
    namespaces.append(namespace)
    node_a, node_b = f"tenancy-{RUN}-a", f"tenancy-{RUN}-b"
    old_name = f"counter-{node_a}"
    # What the operator before tenancy made for node a: named <program>-<node>, no owner yet here.
    old = {
        "apiVersion": names.API_VERSION,
        "kind": names.NODE_PROGRAM_KIND,
        "metadata": {
            "name": old_name,
            "labels": {names.NODE_LABEL: node_a, names.PROGRAM_LABEL: "counter"},
            "finalizers": [names.AGENT_FINALIZER],
        },
        "spec": {
            "programName": "counter",
            "nodeName": node_a,
            "source": {"text": "int old;", "sha256": "0", "origin": "inline"},
            "function": "f",
            "attach": {"type": "CgroupSkb", "direction": "Egress"},
            "podSelector": {},
        },
    }
    cluster.custom.create_namespaced_custom_object(
        names.GROUP, names.VERSION, namespace, names.NODE_PROGRAM_PLURAL, old
    )
    cluster.apply(namespace, tenant_manifest("counter"))

    def adopted() -> bool:
        objs = node_objects(cluster, names.PROGRAM_LABEL, "counter")
        objs = [o for o in objs if o["metadata"]["namespace"] == namespace]
        return [o["spec"]["nodeName"] for o in objs] == [node_a, node_b] and all(
            o["spec"]["source"]["text"] == SOURCE and o["metadata"].get("ownerReferences") for o in objs
        )

    wait_for("the old object adopted and the other node served", adopted, timeout=30)
    objs = [
        o
        for o in node_objects(cluster, names.PROGRAM_LABEL, "counter")
        if o["metadata"]["namespace"] == namespace
    ]
    assert [o["metadata"]["name"] for o in objs] == [
        old_name,
        names.node_program_name(names.PROGRAM_KIND, namespace, "counter", node_b),
    ]
    uid = cluster.program(namespace, "counter")["metadata"]["uid"]
    assert objs[0]["metadata"]["ownerReferences"][0]["uid"] == uid  # garbage collection covers it now


def test_garbage_collection_follows_a_cluster_scoped_owner(cluster: Kube):
    """The backstop: a node object the operator no longer sees goes with its ClusterEbpfProgram."""
    name = f"collected-{RUN}"
    apply_cluster(cluster, name, podSelector={})
    wait_for("node objects", lambda: len(node_objects(cluster, names.CLUSTER_PROGRAM_LABEL, name)) == 2, 30)
    owners = node_objects(cluster, names.CLUSTER_PROGRAM_LABEL, name)[0]["metadata"]["ownerReferences"]
    # Unlabelled, so that only the garbage collector can find it; owned as the operator owns its own.
    orphan = {
        "apiVersion": names.API_VERSION,
        "kind": names.NODE_PROGRAM_KIND,
        "metadata": {"name": f"orphan-{RUN}", "ownerReferences": owners},
        "spec": {
            "programName": name,
            "nodeName": "elsewhere",
            "source": {"text": SOURCE, "sha256": "0"},
            "function": "f",
            "attach": {"type": "CgroupSkb", "direction": "Egress"},
        },
    }
    cluster.custom.create_namespaced_custom_object(
        names.GROUP, names.VERSION, SYSTEM_NAMESPACE, names.NODE_PROGRAM_PLURAL, orphan
    )

    def collected() -> bool:
        try:
            cluster.custom.get_namespaced_custom_object(
                names.GROUP, names.VERSION, SYSTEM_NAMESPACE, names.NODE_PROGRAM_PLURAL, f"orphan-{RUN}"
            )
        except ApiException as e:
            return e.status == 404
        return False

    assert not collected()
    cluster.kubectl("delete", "cebpf", name, "--wait=false")
    wait_for("the program gone", lambda: agents_detach(cluster) or cluster.cluster_program(name) is None, 30)

    wait_for("the garbage collector removes the orphan", collected, timeout=60, interval=0.5)
