"""The Helm chart against a real API server: its objects are accepted, it installs, upgrades and
uninstalls, and its RBAC is enough for the real operator and agent (and no more than the table in
docs/install.md), the agent running on its pod's bound token and serving metrics on loopback only.
What helm renders on its own is checked in test_chart_render.py."""

from __future__ import annotations

import contextlib
import json
import re
import secrets
import shutil
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from bpfleet_api import names
from e2e.controlplane import ControlPlane
from e2e.harness import (
    ManagedProcess,
    agent_process,
    free_address,
    kubectl_run,
    operator_process,
    wait_for,
)
from e2e.kube import Kube
from e2e.podsim import PodSimulator, cleanup_cgroup_tree, find_cgroup2_mount
from e2e.tools import REPO_ROOT
from tests.apiserver.chart import (
    CHART,
    Release,
    agent_pod,
    documents,
    helm,
    helm_ok,
    installed_release,
    pod_bound_token,
    rendered,
    scratch_namespace,
    token_kubeconfig,
    unbound_token,
    unique,
)
from tests.apiserver.listening import connect_refused, non_loopback_ipv4, tcp_listeners
from tests.apiserver.operator_support import node_state

pytestmark = pytest.mark.apiserver

EXAMPLE = REPO_ROOT / "examples" / "egress-port-deny.yaml"
# What the log of a component says when the API server refused it something.
REFUSED = re.compile(r"forbidden|not enough permissions|\b403\b", re.IGNORECASE)


# --- helpers ---------------------------------------------------------------------------------------


@pytest.fixture
def namespace(crds: Kube) -> Iterator[str]:
    with scratch_namespace(crds, "chart") as name:
        yield name


@pytest.fixture
def release(crds: Kube, namespace: str, helm_home: Path) -> Iterator[Release]:
    """The chart installed into a fresh namespace; uninstalled afterwards, whatever the test did."""
    with installed_release(crds, namespace, helm_home) as installed:
        yield installed


def get(kube: Kube, kind: str, name: str, namespace: str | None = None) -> dict[str, Any] | None:
    """The object, or None when the API server says it does not exist."""
    args = ["get", kind, name, "-o", "json", *(["-n", namespace] if namespace else [])]
    result = kube.kubectl(*args, check=False)
    return json.loads(result) if result.strip() else None


def release_objects(kube: Kube, release: Release) -> dict[tuple[str, str], dict[str, Any]]:
    """(kind, name) -> object, for every object the chart makes."""
    found = {}
    namespaced = [
        ("deployment", release.operator),
        ("daemonset", release.agent),
        ("serviceaccount", release.operator),
        ("serviceaccount", release.agent),
    ]
    cluster = [
        ("clusterrole", release.operator),
        ("clusterrole", release.agent),
        ("clusterrolebinding", release.operator),
        ("clusterrolebinding", release.agent),
        *(("clusterrole", f"{release.name}-bpfleet-{role}") for role in ("edit", "view", "cluster-programs")),
        *(("validatingadmissionpolicy", name) for name in release.policies),
        *(("validatingadmissionpolicybinding", name) for name in release.policies),
    ]
    for kind, name in namespaced:
        obj = get(kube, kind, name, release.namespace)
        if obj is not None:
            found[(kind, name)] = obj
    for kind, name in cluster:
        obj = get(kube, kind, name)
        if obj is not None:
            found[(kind, name)] = obj
    return found


EVERY_OBJECT_COUNT = 15


# --- against the API server ------------------------------------------------------------------------

# Every optional branch of the templates, so that each renders into objects the server accepts.
ALL_OPTIONS = [
    "--set", "agent.kubeletCgroupRoot=/sys/fs/cgroup/unified",
    "--set", "operator.liveness.enabled=false",
    "--set", "operator.priorityClassName=system-cluster-critical",
    "--set", "agent.maxUnavailable=10%",
    "--set-json", 'imagePullSecrets=[{"name": "regcred"}]',
    "--set-json", 'operator.podAnnotations={"example.com/a": "b"}',
    "--set-json", 'agent.podLabels={"team": "net"}',
    "--set-json", 'operator.nodeSelector={"kubernetes.io/os": "linux"}',
    "--set-json", 'operator.tolerations=[{"key": "dedicated", "operator": "Exists"}]',
    "--set-json", 'agent.serviceAccount.annotations={"example.com/sa": "x"}',
    "--set", "agent.metrics.bindAddress=0.0.0.0",
    "--set", "agent.metrics.port=9200",
    "--set", "agent.maxMapBytes=1048576",
]  # fmt: skip


@pytest.mark.parametrize(
    "flags", [pytest.param([], id="defaults"), pytest.param(ALL_OPTIONS, id="all options")]
)
def test_rendered_manifests_pass_server_dry_run(
    crds: Kube, namespace: str, helm_home: Path, flags: list[str]
):
    manifests = helm_ok(
        helm_home, "template", unique("dry"), str(CHART), "-n", namespace, "--include-crds", *flags
    )
    kinds = sorted({d["kind"] for d in documents(manifests)})
    assert kinds == [
        "ClusterRole",
        "ClusterRoleBinding",
        "CustomResourceDefinition",
        "DaemonSet",
        "Deployment",
        "Role",
        "RoleBinding",
        "ServiceAccount",
        "ValidatingAdmissionPolicy",
        "ValidatingAdmissionPolicyBinding",
    ]
    result = kubectl_run(
        crds.kubeconfig, "apply", "--dry-run=server", "-n", namespace, "-f", "-", input=manifests
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("(server dry run)") == len(documents(manifests)), result.stdout


def test_install_creates_every_object(crds: Kube, release: Release):
    objects = release_objects(crds, release)
    assert len(objects) == EVERY_OBJECT_COUNT, sorted(objects)
    for (kind, name), obj in objects.items():
        assert obj["metadata"]["labels"]["app.kubernetes.io/instance"] == release.name, (kind, name)
    for component in (release.operator, release.agent):
        binding = objects[("clusterrolebinding", component)]
        assert binding["roleRef"]["name"] == component
        assert binding["subjects"] == [
            {"kind": "ServiceAccount", "name": component, "namespace": release.namespace}
        ]
    daemonset = objects[("daemonset", release.agent)]["spec"]["template"]["spec"]
    assert daemonset["serviceAccountName"] == release.agent
    assert daemonset["containers"][0]["securityContext"]["privileged"] is True
    deployment = objects[("deployment", release.operator)]["spec"]
    assert deployment["template"]["spec"]["serviceAccountName"] == release.operator


def test_upgrade_changes_the_daemonset(crds: Kube, release: Release, helm_home: Path):
    before = get(crds, "daemonset", release.agent, release.namespace)
    assert before is not None
    toleration = {"key": "dedicated", "operator": "Equal", "value": "ebpf", "effect": "NoSchedule"}
    helm_ok(
        helm_home,
        "upgrade",
        release.name,
        str(CHART),
        "-n",
        release.namespace,
        "--set",
        "agent.logLevel=DEBUG",
        "--set-json",
        f"agent.tolerations=[{json.dumps(toleration)}]",
        kubeconfig=crds.kubeconfig,
    )
    after = get(crds, "daemonset", release.agent, release.namespace)
    assert after is not None
    assert after["metadata"]["generation"] > before["metadata"]["generation"]
    pod = after["spec"]["template"]["spec"]
    assert pod["tolerations"] == [toleration]
    assert {"name": "BPFLEET_LOG_LEVEL", "value": "DEBUG"} in pod["containers"][0]["env"]
    # The operator's values did not change, and neither did its Deployment.
    operator = get(crds, "deployment", release.operator, release.namespace)
    assert operator is not None and operator["metadata"]["generation"] == 1


def test_uninstall_removes_every_object_and_keeps_the_crds(crds: Kube, release: Release, helm_home: Path):
    assert len(release_objects(crds, release)) == EVERY_OBJECT_COUNT
    helm_ok(helm_home, "uninstall", release.name, "-n", release.namespace, kubeconfig=crds.kubeconfig)
    wait_for("the release's objects to be gone", lambda: not release_objects(crds, release), timeout=30)
    # Helm never deletes CRDs: deleting them would delete every EbpfProgram in the cluster.
    for crd in sorted((CHART / "crds").glob("*.yaml")):
        name = yaml.safe_load(crd.read_text())["metadata"]["name"]
        assert get(crds, "crd", name) is not None, name


def test_install_refuses_bad_values_and_creates_nothing(crds: Kube, namespace: str, helm_home: Path):
    name = unique("bad")
    result = helm(
        helm_home,
        "install",
        name,
        str(CHART),
        "-n",
        namespace,
        "--skip-crds",
        "--set",
        "operator.replicas=6",
        kubeconfig=crds.kubeconfig,
    )
    try:
        assert result.returncode != 0
        assert "at '/operator/replicas': maximum: got 6, want 5" in result.stderr
        assert not release_objects(crds, Release(name, namespace))
    finally:
        helm(helm_home, "uninstall", name, "-n", namespace, kubeconfig=crds.kubeconfig)


def test_kustomization_lists_every_example(crds: Kube, namespace: str):
    examples = sorted(p for p in (REPO_ROOT / "examples").glob("*.yaml") if p.name != "kustomization.yaml")
    expected = sorted((d["kind"], d["metadata"]["name"]) for p in examples for d in documents(p.read_text()))
    built = crds.kubectl("kustomize", str(REPO_ROOT / "examples"))
    assert sorted((d["kind"], d["metadata"]["name"]) for d in documents(built)) == expected
    result = crds.kubectl("apply", "--dry-run=server", "-n", namespace, "-f", "-", input=built)
    assert result.count("(server dry run)") == len(expected)


# --- the real components on the chart's accounts -------------------------------------------------


def test_rbac_is_enough_for_the_real_operator_and_agent(
    control_plane: ControlPlane, crds: Kube, release: Release, helm_home: Path, tmp_path: Path
):
    """The operator and an agent authenticated as the chart's ServiceAccounts run a program end to end
    (node state written, attached, status reported, deleted and detached) with nothing refused. The
    agent holds what its pod would: the token bound to its Pod on the node, which the node-binding
    policies require, and the environment of the chart's DaemonSet, so its metrics are on loopback."""
    kube = crds
    run = secrets.token_hex(3)
    node = f"chart-node-{run}"
    program_namespace = f"chart-rbac-{run}"
    cgroup_base = find_cgroup2_mount() / f"bpfleet-chart-{run}"
    bpffs_root = Path(f"/sys/fs/bpf/bpfleet-chart-{run}")
    logs = tmp_path / "logs"
    operator_config = token_kubeconfig(
        kube, unbound_token(kube, release.namespace, release.operator), tmp_path / "operator.kubeconfig"
    )
    # A free port, so that agents of other runs on this host cannot collide with this one.
    port = int(free_address().rsplit(":", 1)[1])
    chart_env = daemonset_env(helm_home, release, "--set", f"agent.metrics.port={port}")

    # The example, pinned to this test's node: other tests' Nodes may share the control plane.
    program = yaml.safe_load(EXAMPLE.read_text())
    program["spec"]["nodeSelector"] = {"matchLabels": {"bpfleet.test/node": node}}
    name = program["metadata"]["name"]

    sim: PodSimulator | None = None
    processes: list[ManagedProcess] = []
    with contextlib.ExitStack() as pods:
        try:
            sim = PodSimulator(kube.api, node, cgroup_base / "node")
            sim.ensure_node(labels={"bpfleet.test/node": node})
            sim.create_pod(program_namespace, "web-1", {"app": "web"})
            pod = pods.enter_context(agent_pod(kube, release, node))
            agent_config = token_kubeconfig(
                kube,
                pod_bound_token(kube, release.namespace, release.agent, pod),
                tmp_path / "agent.kubeconfig",
            )
            operator = operator_process(operator_config, logs)
            # As the chart runs it: electing itself leader through the Lease in the release namespace.
            operator.env.update(
                {"BPFLEET_LEADER_ELECT": "true", "POD_NAMESPACE": release.namespace, "POD_NAME": "op-0"}
            )
            processes.append(operator.start())
            agent = agent_process(
                agent_config,
                node,
                cgroup_base / "node",
                bpffs_root,
                logs,
                chart_env["BPFLEET_METRICS_ADDRESS"],
            )
            agent.env.update({k: chart_env[k] for k in ("BPFLEET_SYSTEM_NAMESPACE", "BPFLEET_MAX_MAP_BYTES")})
            processes.append(agent.start())
            kube.apply(program_namespace, program)

            def wait(what: str, predicate: Callable[[], bool], timeout: float) -> None:
                """wait_for, but a refusal in a log ends it at once, and a timeout shows the logs."""
                try:
                    wait_for(what, lambda: bool(refusals(processes)) or predicate(), timeout, interval=0.2)
                except TimeoutError as e:
                    tails = "\n".join(f"--- {p.name}:\n{p.log_tail()}" for p in processes)
                    raise AssertionError(f"{e}\n{tails}") from None
                refused = refusals(processes)
                assert not refused, f"refused while waiting for {what}:\n" + "\n".join(refused[:10])

            def reported() -> list[dict[str, Any]]:
                items = ((node_state(kube, node) or {}).get("status") or {}).get("programs") or []
                return [i for i in items if (i["namespace"], i["name"]) == (program_namespace, name)]

            def node_program_ready() -> bool:
                found = reported()
                return bool(found) and found[0].get("ready") is True and found[0]["pods"]["attached"] == 1

            wait("the operator to write the node's state, the agent to attach it", node_program_ready, 90)
            wait("the operator to report Ready", lambda: kube.is_ready(program_namespace, name), 30)
            features = kube.custom.get_cluster_custom_object(
                names.GROUP, names.VERSION, names.NODE_STATE_PLURAL, node
            )
            assert features.get("status", {}).get("kernel"), features
            assert_metrics_on_loopback_only(port)

            kube.kubectl("delete", "ebpfprogram", name, "-n", program_namespace, "--wait=false")
            wait("the program to be detached and deleted", lambda: not kube.programs(program_namespace), 60)
            assert not reported()

            for process in processes:
                assert process.alive, f"{process.name} exited:\n{process.log_tail()}"
            # This operator did the work, not another one sharing the control plane.
            assert "creating node state" in processes[0].log_path.read_text()
            assert not refusals(processes)
        finally:
            for process in processes:
                process.stop()
            _force_remove_program(kube, program_namespace, name)
            if sim is not None:
                sim.cleanup()
            if cgroup_base.exists():
                cleanup_cgroup_tree(cgroup_base)
            shutil.rmtree(bpffs_root, ignore_errors=True)
            kube.kubectl("delete", "namespace", program_namespace, "--wait=false", check=False)
            kube.kubectl("delete", names.NODE_STATE_PLURAL, node, "--ignore-not-found", check=False)
            kube.kubectl("delete", names.NODE_STATE_PROGRAMS_PLURAL, node, "--ignore-not-found", check=False)


def daemonset_env(home: Path, release: Release, *flags: str) -> dict[str, str]:
    """The agent's environment as the chart's DaemonSet gives it, downward API values resolved."""
    objects = rendered(home, *flags)
    [agent] = objects[("DaemonSet", "r-bpfleet-agent")]["spec"]["template"]["spec"]["containers"]
    downward = {"metadata.namespace": release.namespace}
    return {
        e["name"]: e["value"] if "value" in e else downward.get(e["valueFrom"]["fieldRef"]["fieldPath"], "")
        for e in agent["env"]
    }


def assert_metrics_on_loopback_only(port: int) -> None:
    """/healthz answers on 127.0.0.1, the only address listening on the port; the node's other
    addresses refuse the connection."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as reply:
        assert reply.status == 200
    assert tcp_listeners(port) == {"127.0.0.1"}
    for address in non_loopback_ipv4():
        assert connect_refused(address, port), address


def refusals(processes: list[ManagedProcess]) -> list[str]:
    """The lines in which a component says the API server refused it something."""
    found = []
    for process in processes:
        text = process.log_path.read_text(errors="replace") if process.log_path.exists() else ""
        found += [f"{process.name}: {line}" for line in text.splitlines() if REFUSED.search(line)]
    return found


def _force_remove_program(kube: Kube, namespace: str, name: str) -> None:
    """After a failure: with the components stopped, nobody would release the finalizer."""
    patch = json.dumps({"metadata": {"finalizers": None}})
    if kube.program(namespace, name) is not None:
        kube.kubectl("patch", "ebpfprogram", name, "-n", namespace, "--type=merge", "-p", patch, check=False)
