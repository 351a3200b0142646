"""Agents are bound to their node: with the service-account token of a pod on node A (a real bound
token from the API server), the chart's ValidatingAdmissionPolicies let an agent write node A's
EbpfNodeState (its status only) and BpfleetNode, and nothing of node B's; a token of the agent's
ServiceAccount bound to no pod may write nothing."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from kubernetes.client import CustomObjectsApi
from kubernetes.client.exceptions import ApiException

from bpfleet_api import names, patching
from e2e.harness import install_crds, wait_for
from e2e.kube import Kube
from tests.apiserver.chart import (
    NODE_NAME_CLAIM,
    Release,
    agent_pod,
    client,
    installed_release,
    pod_bound_token,
    scratch_namespace,
    scratch_nodes,
    token_kubeconfig,
    unbound_token,
    unique,
    wait_policies_enforced,
    who_am_i,
)

pytestmark = pytest.mark.apiserver


@dataclass
class Cluster:
    kube: Kube
    release: Release
    node_a: str
    node_b: str
    namespace: str  # a scratch namespace of the test's
    agent_a: CustomObjectsApi  # the agent of node A, with its pod's token
    agent_a_kubeconfig: Path
    unbound: CustomObjectsApi  # the agent's ServiceAccount, with a token bound to no pod
    unbound_kubeconfig: Path


@pytest.fixture(scope="module")
def cluster(kube: Kube, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    install_crds(kube.kubeconfig)
    home = tmp_path_factory.mktemp("helm")
    keys = tmp_path_factory.mktemp("tokens")
    node_a, node_b = unique("bind-a"), unique("bind-b")
    with (
        scratch_namespace(kube, "bind-rel") as release_namespace,
        installed_release(kube, release_namespace, home) as release,
        scratch_namespace(kube, "bind") as namespace,
        scratch_nodes(kube, node_a, node_b),
        agent_pod(kube, release, node_a) as pod,
    ):
        bound = token_kubeconfig(
            kube, pod_bound_token(kube, release.namespace, release.agent, pod), keys / "agent-a"
        )
        loose = token_kubeconfig(
            kube, unbound_token(kube, release.namespace, release.agent), keys / "unbound"
        )
        yield Cluster(
            kube,
            release,
            node_a,
            node_b,
            namespace,
            CustomObjectsApi(client(bound)),
            bound,
            CustomObjectsApi(client(loose)),
            loose,
        )


# --- helpers ---------------------------------------------------------------------------------------


def node_state_body(cluster: Cluster, node: str) -> dict[str, Any]:
    """The EbpfNodeState of `node`, as the operator makes one (created as the admin)."""
    body = {
        "apiVersion": names.API_VERSION,
        "kind": names.NODE_STATE_PROGRAMS_KIND,
        "metadata": {"name": node, "labels": {"example.com/team": "net"}},
        "spec": {
            "nodeName": node,
            "programs": [
                {
                    "kind": "EbpfProgram",
                    "namespace": cluster.namespace,
                    "name": "p",
                    "generation": 1,
                    "version": "v",
                }
            ],
        },
    }
    return cluster.kube.custom.create_cluster_custom_object(
        names.GROUP, names.VERSION, names.NODE_STATE_PROGRAMS_PLURAL, body
    )


def read(cluster: Cluster, obj: dict[str, Any]) -> dict[str, Any]:
    return cluster.kube.custom.get_cluster_custom_object(
        names.GROUP, names.VERSION, names.NODE_STATE_PROGRAMS_PLURAL, obj["metadata"]["name"]
    )


def patch(
    custom: CustomObjectsApi, obj: dict[str, Any], body: dict[str, Any], *, status: bool = False
) -> None:
    patching.merge_patch(
        custom,
        names.NODE_STATE_PROGRAMS_PLURAL,
        None,
        obj["metadata"]["name"],
        body,
        status=status,
        ignore=(),
    )


STATUS = {"observedGeneration": 1, "programs": []}


def refusal(call: Callable[[], object]) -> str:
    """The message of the 403 that `call` must end in."""
    with pytest.raises(ApiException) as raised:
        call()
    assert raised.value.status == 403, raised.value.body
    return json.loads(raised.value.body)["message"]


def only_own_node(cluster: Cluster) -> str:
    node = cluster.node_a
    return f"an agent on node {node} may only write node {node}'s objects"


@pytest.fixture
def objects(cluster: Cluster) -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
    """Node A's EbpfNodeState and node B's; gone afterwards."""
    made = [node_state_body(cluster, cluster.node_a), node_state_body(cluster, cluster.node_b)]
    try:
        yield made[0], made[1]
    finally:
        for obj in made:
            args = (names.NODE_STATE_PROGRAMS_PLURAL, obj["metadata"]["name"])
            cluster.kube.kubectl("delete", *args, "--ignore-not-found", "--wait=false", check=False)


@pytest.fixture
def enforced(cluster: Cluster, objects: tuple[dict[str, Any], dict[str, Any]]) -> None:
    """Waits until admission has loaded the policies (a dry run the policies refuse is refused)."""
    _, theirs = objects

    def refused() -> bool:
        try:
            cluster.agent_a.patch_cluster_custom_object_status(
                names.GROUP, names.VERSION, names.NODE_STATE_PROGRAMS_PLURAL,
                theirs["metadata"]["name"], {"status": STATUS},
                dry_run="All", _content_type=patching.MERGE_PATCH,
            )  # fmt: skip
        except ApiException as e:
            return e.status == 403
        return False

    wait_policies_enforced(refused)


# --- the token -------------------------------------------------------------------------------------


def test_the_pods_token_names_its_node(cluster: Cluster):
    user = who_am_i(cluster.agent_a_kubeconfig)
    assert user["username"] == cluster.release.agent_user
    assert user["extra"][NODE_NAME_CLAIM] == [cluster.node_a]


def type_checked(kube: Kube, name: str) -> dict[str, Any] | None:
    """The policy's status.typeChecking once the controller has checked its current generation."""
    policy = json.loads(kube.kubectl("get", "validatingadmissionpolicy", name, "-o", "json"))
    status = policy.get("status") or {}
    if status.get("observedGeneration") != policy["metadata"]["generation"]:
        return None
    return status.get("typeChecking") or {}


def test_policies_type_check_against_the_crds(cluster: Cluster):
    kube = cluster.kube
    for name in cluster.release.policies:
        wait_for(f"{name} to be type-checked", lambda n=name: type_checked(kube, n) is not None, 60)
        assert not type_checked(kube, name).get("expressionWarnings"), name

    # The same policy with a misspelt field is warned about: the check does read the CRD's schema.
    policy = json.loads(
        kube.kubectl("get", "validatingadmissionpolicy", cluster.release.policies[0], "-o", "json")
    )
    typo = json.loads(json.dumps(policy["spec"]).replace("object.spec.nodeName", "object.spec.nodeNam"))
    name = unique("typo-probe")
    body = {
        "apiVersion": policy["apiVersion"],
        "kind": policy["kind"],
        "metadata": {"name": name},
        "spec": typo,
    }
    kube.kubectl("create", "-f", "-", input=json.dumps(body))  # no binding: it never applies
    try:
        wait_for("the misspelt policy to be type-checked", lambda: type_checked(kube, name) is not None, 60)
        warnings = type_checked(kube, name).get("expressionWarnings") or []
        assert any("undefined field 'nodeNam'" in w["warning"] for w in warnings), warnings
    finally:
        kube.kubectl("delete", "validatingadmissionpolicy", name, "--ignore-not-found", check=False)


# --- EbpfNodeStates -------------------------------------------------------------------------------


@pytest.mark.usefixtures("enforced")
def test_status_of_another_nodes_state_is_forbidden(cluster: Cluster, objects):
    _, theirs = objects
    message = refusal(lambda: patch(cluster.agent_a, theirs, {"status": STATUS}, status=True))
    assert only_own_node(cluster) in message
    assert f"EbpfNodeState {cluster.node_b} is for node {cluster.node_b}" in message
    assert "status" not in read(cluster, theirs)


@pytest.mark.usefixtures("enforced")
def test_status_of_its_own_state_is_allowed(cluster: Cluster, objects):
    mine, _ = objects
    patch(cluster.agent_a, mine, {"status": STATUS}, status=True)
    assert read(cluster, mine)["status"] == STATUS


@pytest.mark.parametrize(
    "change",
    [
        pytest.param({"spec": {"programs": []}}, id="spec"),
        pytest.param({"metadata": {"labels": {"example.com/team": "elsewhere"}}}, id="labels"),
        pytest.param({"metadata": {"annotations": {"a": "b"}}}, id="annotations"),
        pytest.param({"metadata": {"finalizers": ["example.com/hold"]}}, id="finalizers"),
    ],
)
@pytest.mark.usefixtures("enforced")
def test_its_own_state_changes_only_in_its_status(cluster: Cluster, objects, change: dict[str, Any]):
    mine, _ = objects
    message = refusal(lambda: patch(cluster.agent_a, mine, change))
    # RBAC refuses it first; the policy would too, were RBAC ever widened.
    assert 'cannot patch resource "ebpfnodestates"' in message or (
        f"an agent on node {cluster.node_a} may only write the status of its EbpfNodeState" in message
    )
    after = read(cluster, mine)
    assert after["spec"] == mine["spec"]
    assert after["metadata"]["resourceVersion"] == mine["metadata"]["resourceVersion"]


@pytest.mark.usefixtures("enforced")
def test_node_states_are_neither_created_nor_deleted_by_agents(cluster: Cluster, objects):
    mine, _ = objects
    copy = {k: mine[k] for k in ("apiVersion", "kind", "spec")}
    copy["metadata"] = {"name": unique("made-by-agent")}
    refusal(
        lambda: cluster.agent_a.create_cluster_custom_object(
            names.GROUP, names.VERSION, names.NODE_STATE_PROGRAMS_PLURAL, copy
        )
    )
    refusal(
        lambda: cluster.agent_a.delete_cluster_custom_object(
            names.GROUP, names.VERSION, names.NODE_STATE_PROGRAMS_PLURAL, mine["metadata"]["name"]
        )
    )
    assert read(cluster, mine)["metadata"]["uid"] == mine["metadata"]["uid"]


# --- BpfleetNodes ----------------------------------------------------------------------------------


def bpfleet_node(name: str) -> dict[str, Any]:
    return {"apiVersion": names.API_VERSION, "kind": names.NODE_STATE_KIND, "metadata": {"name": name}}


def node_state(cluster: Cluster, name: str) -> dict[str, Any]:
    return cluster.kube.custom.get_cluster_custom_object(
        names.GROUP, names.VERSION, names.NODE_STATE_PLURAL, name
    )


def patch_node_state(custom: CustomObjectsApi, name: str, status: dict[str, Any]) -> None:
    patching.merge_patch(
        custom, names.NODE_STATE_PLURAL, None, name, {"status": status}, status=True, ignore=()
    )


@pytest.fixture
def no_node_states(cluster: Cluster) -> Iterator[None]:
    """Neither node has a BpfleetNode before the test, nor after it."""

    def remove() -> None:
        for node in (cluster.node_a, cluster.node_b):
            cluster.kube.kubectl("delete", names.NODE_STATE_PLURAL, node, "--ignore-not-found", check=False)

    remove()
    try:
        yield
    finally:
        remove()


@pytest.mark.usefixtures("enforced", "no_node_states")
def test_bpfleet_node_only_its_own(cluster: Cluster):
    def create(custom: CustomObjectsApi, node: str) -> object:
        return custom.create_cluster_custom_object(
            names.GROUP, names.VERSION, names.NODE_STATE_PLURAL, bpfleet_node(node)
        )

    message = refusal(lambda: create(cluster.agent_a, cluster.node_b))
    assert f"{only_own_node(cluster)}: BpfleetNode {cluster.node_b}" in message
    create(cluster.agent_a, cluster.node_a)

    # Node B's BpfleetNode, as its own agent would have made it: node A's agent may not write it.
    create(cluster.kube.custom, cluster.node_b)
    message = refusal(lambda: patch_node_state(cluster.agent_a, cluster.node_b, {"kernel": "forged"}))
    assert only_own_node(cluster) in message
    assert "status" not in node_state(cluster, cluster.node_b)

    patch_node_state(cluster.agent_a, cluster.node_a, {"kernel": "6.18"})
    assert node_state(cluster, cluster.node_a)["status"] == {"kernel": "6.18"}
    refusal(
        lambda: cluster.agent_a.delete_cluster_custom_object(
            names.GROUP, names.VERSION, names.NODE_STATE_PLURAL, cluster.node_a
        )
    )


# --- a token that names no node --------------------------------------------------------------------


@pytest.mark.usefixtures("enforced", "no_node_states")
def test_a_token_bound_to_no_pod_may_write_nothing(cluster: Cluster, objects):
    mine, _ = objects
    assert NODE_NAME_CLAIM not in who_am_i(cluster.unbound_kubeconfig).get("extra", {})
    message = refusal(lambda: patch(cluster.unbound, mine, {"status": STATUS}, status=True))
    assert "is bound to no pod on a node" in message
    assert read(cluster, mine).get("status") is None

    cluster.kube.custom.create_cluster_custom_object(
        names.GROUP, names.VERSION, names.NODE_STATE_PLURAL, bpfleet_node(cluster.node_a)
    )
    message = refusal(lambda: patch_node_state(cluster.unbound, cluster.node_a, {"kernel": "forged"}))
    assert "is bound to no pod on a node" in message
    assert "status" not in node_state(cluster, cluster.node_a)


def test_other_users_are_left_to_rbac(cluster: Cluster, objects, tmp_path: Path):
    """The operator (any token) still writes node states' specs: the policies bind only the agent."""
    _, theirs = objects
    operator = token_kubeconfig(
        cluster.kube,
        unbound_token(cluster.kube, cluster.release.namespace, cluster.release.operator),
        tmp_path / "op",
    )
    patch(CustomObjectsApi(client(operator)), theirs, {"spec": {"programs": []}})
    assert read(cluster, theirs)["spec"]["programs"] == []
