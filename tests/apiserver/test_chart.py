"""The Helm chart against a real API server: it lints, its objects are accepted, it installs, upgrades
and uninstalls, its schema refuses bad values, it ships crds/ unchanged, and its RBAC is enough for
the real operator and agent (and no more than the table in docs/install.md)."""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from bpfleet_api import names
from e2e.controlplane import ControlPlane
from e2e.harness import (
    ManagedProcess,
    agent_process,
    install_crds,
    kubectl_run,
    operator_process,
    wait_for,
)
from e2e.kube import Kube
from e2e.podsim import PodSimulator, cleanup_cgroup_tree, find_cgroup2_mount
from e2e.tools import REPO_ROOT, tool_path

pytestmark = pytest.mark.apiserver

CHART = REPO_ROOT / "charts" / "bpfleet"
EXAMPLE = REPO_ROOT / "examples" / "egress-port-deny.yaml"
# What the log of a component says when the API server refused it something.
REFUSED = re.compile(r"forbidden|not enough permissions|\b403\b", re.IGNORECASE)


# --- helpers ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def helm_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Helm's config, cache and data dirs: the tests never read or write the user's."""
    return tmp_path_factory.mktemp("helm")


def helm(home: Path, *args: str, kubeconfig: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "HELM_CONFIG_HOME": str(home / "config"),
        "HELM_CACHE_HOME": str(home / "cache"),
        "HELM_DATA_HOME": str(home / "data"),
    }
    argv = [str(tool_path("helm")), *args]
    if kubeconfig is not None:
        argv += ["--kubeconfig", str(kubeconfig)]
    return subprocess.run(argv, capture_output=True, text=True, env=env, check=False, timeout=180)


def helm_ok(home: Path, *args: str, kubeconfig: Path | None = None) -> str:
    result = helm(home, *args, kubeconfig=kubeconfig)
    assert result.returncode == 0, f"helm {' '.join(args)}:\n{result.stdout}\n{result.stderr}"
    return result.stdout


def documents(text: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(text) if d]


def unique(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(3)}"


@pytest.fixture(scope="module")
def crds(kube: Kube) -> Kube:
    install_crds(kube.kubeconfig)
    return kube


@pytest.fixture
def namespace(crds: Kube) -> Iterator[str]:
    name = unique("chart")
    crds.kubectl("create", "namespace", name)
    try:
        yield name
    finally:
        crds.kubectl("delete", "namespace", name, "--wait=false", check=False)


@dataclass
class Release:
    name: str
    namespace: str

    @property
    def operator(self) -> str:
        return f"{self.name}-bpfleet-operator"

    @property
    def agent(self) -> str:
        return f"{self.name}-bpfleet-agent"


@pytest.fixture
def release(crds: Kube, namespace: str, helm_home: Path) -> Iterator[Release]:
    """The chart installed into a fresh namespace; uninstalled afterwards, whatever the test did."""
    installed = Release(unique("rel"), namespace)
    try:
        # The session's CRDs were applied from crds/ by kubectl; Helm 4 would apply its copies again
        # as a second field manager (docs/install.md), so it skips them as a user would.
        helm_ok(
            helm_home,
            "install",
            installed.name,
            str(CHART),
            "-n",
            namespace,
            "--skip-crds",
            kubeconfig=crds.kubeconfig,
        )
        yield installed
    finally:
        helm(helm_home, "uninstall", installed.name, "-n", namespace, kubeconfig=crds.kubeconfig)


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


EVERY_OBJECT_COUNT = 8


# --- the chart on its own --------------------------------------------------------------------------


def test_helm_lint_passes(helm_home: Path):
    output = helm_ok(helm_home, "lint", "--strict", str(CHART))
    assert "1 chart(s) linted, 0 chart(s) failed" in output


def test_crd_copies_equal_crds_byte_for_byte():
    source = {p.name: p.read_bytes() for p in sorted((REPO_ROOT / "crds").glob("*.yaml"))}
    copies = {p.name: p.read_bytes() for p in sorted((CHART / "crds").glob("*.yaml"))}
    fix = "run `make chart-crds` (copies crds/*.yaml into charts/bpfleet/crds/)"
    assert sorted(copies) == sorted(source), f"the chart's CRD files differ from crds/: {fix}"
    drifted = [name for name in source if copies[name] != source[name]]
    assert not drifted, f"charts/bpfleet/crds/ drifted from crds/ in {drifted}: {fix}"


@pytest.mark.parametrize(
    ("flags", "error"),
    [
        pytest.param(
            ["--set", "operator.replicas=9"],
            "at '/operator/replicas': maximum: got 9, want 5",
            id="replicas over 5",
        ),
        pytest.param(
            ["--set", "operator.replica=1"],
            "at '/operator': additional properties 'replica' not allowed",
            id="unknown operator key",
        ),
        pytest.param(
            ["--set", "agents.logLevel=DEBUG"],
            "additional properties 'agents' not allowed",
            id="unknown top-level key",
        ),
        pytest.param(
            ["--set", "agent.logLevel=LOUD"],
            "at '/agent/logLevel'",
            id="log level not a Python level",
        ),
        pytest.param(
            ["--set", "agent.image.pullPolicy=Sometimes"],
            "at '/agent/image/pullPolicy'",
            id="pull policy",
        ),
    ],
)
def test_schema_refuses_bad_values(helm_home: Path, flags: list[str], error: str):
    result = helm(helm_home, "template", "r", str(CHART), *flags)
    assert result.returncode != 0, result.stdout
    assert "values don't meet the specifications of the schema" in result.stderr
    assert error in result.stderr, result.stderr


def test_replicas_schema_explains_leader_election():
    replicas = json.loads((CHART / "values.schema.json").read_text())["properties"]["operator"]
    replicas = replicas["properties"]["replicas"]
    assert replicas["maximum"] == 5
    assert "leader election" in replicas["description"]


def test_rendered_defaults_are_what_the_docs_promise(helm_home: Path):
    rendered = documents(helm_ok(helm_home, "template", "r", str(CHART), "-n", "bpfleet-system"))
    by_kind = {(d["kind"], d["metadata"]["name"]): d for d in rendered}
    deployment = by_kind[("Deployment", "r-bpfleet-operator")]
    assert deployment["spec"]["replicas"] == 1
    assert deployment["spec"]["strategy"] == {"type": "RollingUpdate"}
    env = {e["name"]: e for e in deployment["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["BPFLEET_LEADER_ELECT"]["value"] == "true"
    assert env["POD_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    [operator] = deployment["spec"]["template"]["spec"]["containers"]
    assert operator["image"] == "bpfleet/operator:0.1.0"
    assert operator["command"] == ["bpfleet-operator"]
    assert operator["args"] == ["--liveness", "http://0.0.0.0:8080/healthz"]
    assert operator["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "healthz"}
    assert {"name": "BPFLEET_LOG_LEVEL", "value": "INFO"} in operator["env"]

    daemonset = by_kind[("DaemonSet", "r-bpfleet-agent")]
    assert daemonset["spec"]["updateStrategy"] == {
        "type": "RollingUpdate",
        "rollingUpdate": {"maxUnavailable": 1},
    }
    pod = daemonset["spec"]["template"]["spec"]
    assert pod["hostPID"] is True
    assert pod["hostNetwork"] is True
    assert pod["priorityClassName"] == "system-node-critical"
    assert pod["tolerations"] == [{"operator": "Exists"}]
    [agent] = pod["containers"]
    assert agent["image"] == "bpfleet/agent:0.1.0"
    assert agent["command"] == ["bpfleet-agent"]
    assert agent["securityContext"] == {"privileged": True}
    env = {e["name"]: e for e in agent["env"]}
    assert env["NODE_NAME"]["valueFrom"] == {"fieldRef": {"fieldPath": "spec.nodeName"}}
    assert env["BPFLEET_BPFFS_ROOT"]["value"] == "/sys/fs/bpf/bpfleet"
    # Empty means autodetect: the variable is left out, never set to "" (which would mean the cwd).
    assert "BPFLEET_KUBELET_CGROUP_ROOT" not in env
    host_paths = {v["name"]: v["hostPath"]["path"] for v in pod["volumes"]}
    mounts = {m["mountPath"]: (host_paths[m["name"]], m) for m in agent["volumeMounts"]}
    assert {path: host for path, (host, _) in mounts.items()} == {
        "/sys/fs/bpf": "/sys/fs/bpf",
        "/sys/fs/cgroup": "/sys/fs/cgroup",
        "/sys/kernel/tracing": "/sys/kernel/tracing",
        "/host/proc": "/proc",
        "/lib/modules": "/lib/modules",
        "/usr/src": "/usr/src",
    }
    assert mounts["/sys/fs/bpf"][1]["mountPropagation"] == "Bidirectional"
    assert all(mounts[p][1].get("readOnly") for p in ("/host/proc", "/lib/modules", "/usr/src"))

    with_root = documents(
        helm_ok(
            helm_home, "template", "r", str(CHART), "--set", "agent.kubeletCgroupRoot=/sys/fs/cgroup/unified"
        )
    )
    [daemonset] = [d for d in with_root if d["kind"] == "DaemonSet"]
    env = {e["name"]: e.get("value") for e in daemonset["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["BPFLEET_KUBELET_CGROUP_ROOT"] == "/sys/fs/cgroup/unified"


def test_cluster_roles_have_no_wildcards(helm_home: Path):
    rendered = documents(helm_ok(helm_home, "template", "r", str(CHART)))
    roles = [d for d in rendered if d["kind"] == "ClusterRole"]
    assert len(roles) == 2
    for role in roles:
        for rule in role["rules"]:
            for field in ("apiGroups", "resources", "verbs"):
                assert "*" not in rule[field], f"{role['metadata']['name']}: {rule}"


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
]  # fmt: skip


@pytest.mark.parametrize(
    "flags", [pytest.param([], id="defaults"), pytest.param(ALL_OPTIONS, id="all options")]
)
def test_rendered_manifests_pass_server_dry_run(
    crds: Kube, namespace: str, helm_home: Path, flags: list[str]
):
    rendered = helm_ok(
        helm_home, "template", unique("dry"), str(CHART), "-n", namespace, "--include-crds", *flags
    )
    kinds = sorted({d["kind"] for d in documents(rendered)})
    assert kinds == [
        "ClusterRole",
        "ClusterRoleBinding",
        "CustomResourceDefinition",
        "DaemonSet",
        "Deployment",
        "Role",
        "RoleBinding",
        "ServiceAccount",
    ]
    result = kubectl_run(
        crds.kubeconfig, "apply", "--dry-run=server", "-n", namespace, "-f", "-", input=rendered
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("(server dry run)") == len(documents(rendered)), result.stdout


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


# --- RBAC ------------------------------------------------------------------------------------------


def service_account_kubeconfig(kube: Kube, release: Release, account: str, path: Path) -> Path:
    """A kubeconfig that authenticates as the ServiceAccount with a bound token, as its pod would."""
    token = kube.kubectl("create", "token", account, "-n", release.namespace, "--duration=1h").strip()
    admin = yaml.safe_load(kube.kubeconfig.read_text())
    context = next(c for c in admin["contexts"] if c["name"] == admin["current-context"])["context"]
    cluster = next(c for c in admin["clusters"] if c["name"] == context["cluster"])["cluster"]
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "bpfleet", "cluster": cluster}],
        "users": [{"name": account, "user": {"token": token}}],
        "contexts": [{"name": account, "context": {"cluster": "bpfleet", "user": account}}],
        "current-context": account,
    }
    path.write_text(yaml.safe_dump(config))
    path.chmod(0o600)
    return path


def can_i(kube: Kube, release: Release, account: str, *args: str) -> bool:
    user = f"system:serviceaccount:{release.namespace}:{account}"
    return kube.kubectl("auth", "can-i", *args, "--as", user, check=False).strip() == "yes"


# (component, what it asks, granted?): the table of docs/install.md, and a few things it must not do.
CAN_I = [
    ("operator", "get ebpfprograms.bpfleet.io -n x", True),
    ("operator", "patch ebpfprograms.bpfleet.io -n x", True),
    ("operator", "patch ebpfprograms.bpfleet.io --subresource=status -n x", True),
    ("operator", "delete ebpfnodeprograms.bpfleet.io -n x", True),
    ("operator", "create events -n x", True),
    ("operator", "get configmaps -n x", True),
    ("operator", "watch customresourcedefinitions.apiextensions.k8s.io", True),
    ("operator", "get secrets -n x", False),
    ("operator", "create ebpfprograms.bpfleet.io -n x", False),
    ("operator", "delete ebpfprograms.bpfleet.io -n x", False),
    ("operator", "patch ebpfnodeprograms.bpfleet.io --subresource=status -n x", False),
    ("operator", "patch nodes", False),
    ("operator", "patch configmaps -n x", False),
    ("agent", "watch ebpfnodeprograms.bpfleet.io -A", True),
    ("agent", "patch ebpfnodeprograms.bpfleet.io -n x", True),
    ("agent", "patch ebpfnodeprograms.bpfleet.io --subresource=status -n x", True),
    ("agent", "create bpfleetnodes.bpfleet.io", True),
    ("agent", "patch bpfleetnodes.bpfleet.io --subresource=status", True),
    ("agent", "watch pods -A", True),
    ("agent", "create ebpfnodeprograms.bpfleet.io -n x", False),
    ("agent", "delete ebpfnodeprograms.bpfleet.io -n x", False),
    ("agent", "patch ebpfprograms.bpfleet.io -n x", False),
    ("agent", "patch bpfleetnodes.bpfleet.io", False),
    ("agent", "get configmaps -n x", False),
    ("agent", "get secrets -n x", False),
    ("agent", "patch pods -n x", False),
    ("agent", "list nodes", False),
]


@pytest.mark.parametrize(
    ("component", "ask", "allowed"),
    [pytest.param(*row, id=f"{row[0]} {row[1]}: {'yes' if row[2] else 'no'}") for row in CAN_I],
)
def test_rbac_grants_only_the_table(crds: Kube, release: Release, component: str, ask: str, allowed: bool):
    account = release.operator if component == "operator" else release.agent
    assert can_i(crds, release, account, *ask.split()) is allowed


def test_rbac_is_enough_for_the_real_operator_and_agent(
    control_plane: ControlPlane, crds: Kube, release: Release, tmp_path: Path
):
    """The operator and an agent authenticated as the chart's ServiceAccounts run a program end to end
    (node object created, attached, status written, deleted and detached) with nothing refused."""
    kube = crds
    run = secrets.token_hex(3)
    node = f"chart-node-{run}"
    program_namespace = f"chart-rbac-{run}"
    cgroup_base = find_cgroup2_mount() / f"bpfleet-chart-{run}"
    bpffs_root = Path(f"/sys/fs/bpf/bpfleet-chart-{run}")
    logs = tmp_path / "logs"
    operator_config = service_account_kubeconfig(
        kube, release, release.operator, tmp_path / "operator.kubeconfig"
    )
    agent_config = service_account_kubeconfig(kube, release, release.agent, tmp_path / "agent.kubeconfig")

    # The example, pinned to this test's node: other tests' Nodes may share the control plane.
    program = yaml.safe_load(EXAMPLE.read_text())
    program["spec"]["nodeSelector"] = {"matchLabels": {"bpfleet.test/node": node}}
    name = program["metadata"]["name"]

    sim: PodSimulator | None = None
    processes: list[ManagedProcess] = []
    try:
        sim = PodSimulator(kube.api, node, cgroup_base / "node")
        sim.ensure_node(labels={"bpfleet.test/node": node})
        sim.create_pod(program_namespace, "web-1", {"app": "web"})
        operator = operator_process(operator_config, logs)
        # As the chart runs it: electing itself leader through the Lease in the release namespace.
        operator.env.update(
            {"BPFLEET_LEADER_ELECT": "true", "POD_NAMESPACE": release.namespace, "POD_NAME": "op-0"}
        )
        processes.append(operator.start())
        processes.append(agent_process(agent_config, node, cgroup_base / "node", bpffs_root, logs).start())
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

        def node_program_ready() -> bool:
            [found] = kube.node_programs(program_namespace, name)
            status = found.get("status") or {}
            ready = next(c for c in status.get("conditions", []) if c["type"] == "Ready")
            return ready["status"] == "True" and status["pods"]["attached"] == 1

        wait("the operator to create the node object, the agent to attach it", node_program_ready, 90)
        wait("the operator to report Ready", lambda: kube.is_ready(program_namespace, name), 30)
        features = kube.custom.get_cluster_custom_object(
            names.GROUP, names.VERSION, names.NODE_STATE_PLURAL, node
        )
        assert features.get("status", {}).get("kernel"), features

        kube.kubectl("delete", "ebpfprogram", name, "-n", program_namespace, "--wait=false")
        wait("the program to be detached and deleted", lambda: not kube.programs(program_namespace), 60)
        assert not kube.node_programs(program_namespace, name)

        for process in processes:
            assert process.alive, f"{process.name} exited:\n{process.log_tail()}"
        # This operator did the work, not another one sharing the control plane.
        assert "creating node program" in processes[0].log_path.read_text()
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


def refusals(processes: list[ManagedProcess]) -> list[str]:
    """The lines in which a component says the API server refused it something."""
    found = []
    for process in processes:
        text = process.log_path.read_text(errors="replace") if process.log_path.exists() else ""
        found += [f"{process.name}: {line}" for line in text.splitlines() if REFUSED.search(line)]
    return found


def _force_remove_program(kube: Kube, namespace: str, name: str) -> None:
    """After a failure: with the components stopped, nobody would release the finalizers."""
    patch = json.dumps({"metadata": {"finalizers": None}})
    for node_program in kube.node_programs(namespace, name):
        node_program_name = node_program["metadata"]["name"]
        kube.kubectl(
            "patch",
            "ebpfnodeprogram",
            node_program_name,
            "-n",
            namespace,
            "--type=merge",
            "-p",
            patch,
            check=False,
        )
    if kube.program(namespace, name) is not None:
        kube.kubectl("patch", "ebpfprogram", name, "-n", namespace, "--type=merge", "-p", patch, check=False)
