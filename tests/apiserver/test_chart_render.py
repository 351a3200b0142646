"""The chart on its own, rendered by helm: it lints, its schema refuses bad values, it ships crds/
unchanged, and what it renders is what docs/install.md and docs/metrics.md promise: the agent's
environment, metrics on loopback, the node-binding policies for the right user, the roles."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from e2e.tools import REPO_ROOT
from node_agent.main import parse_args
from tests.apiserver.chart import CHART, helm, helm_ok, rendered

pytestmark = pytest.mark.apiserver


def agent_container(objects: dict[tuple[str, str], dict[str, Any]]) -> dict[str, Any]:
    [agent] = objects[("DaemonSet", "r-bpfleet-agent")]["spec"]["template"]["spec"]["containers"]
    return agent


def env_of(container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {e["name"]: e for e in container["env"]}


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
    ("value", "error"),
    [
        pytest.param(
            "operator.replicas=9", "at '/operator/replicas': maximum: got 9, want 5", id="replicas over 5"
        ),
        pytest.param(
            "operator.replica=1",
            "at '/operator': additional properties 'replica' not allowed",
            id="unknown operator key",
        ),
        pytest.param(
            "agents.logLevel=DEBUG", "additional properties 'agents' not allowed", id="unknown top-level key"
        ),
        pytest.param("agent.logLevel=LOUD", "at '/agent/logLevel'", id="log level not a Python level"),
        pytest.param("agent.image.pullPolicy=Sometimes", "at '/agent/image/pullPolicy'", id="pull policy"),
        pytest.param(
            "agent.metricsPort=9101",
            "additional properties 'metricsPort' not allowed",
            id="metricsPort, now agent.metrics.port",
        ),
        pytest.param(
            "agent.metrics.bindAddress=", "at '/agent/metrics/bindAddress'", id="empty bind address"
        ),
        pytest.param(
            "operator.deleteGraceSeconds=-1",
            "at '/operator/deleteGraceSeconds'",
            id="negative deletion grace",
        ),
        pytest.param("agent.maxMapBytes=12", "at '/agent/maxMapBytes'", id="map cap under a page"),
        pytest.param(
            "agent.compile.concurrency=0", "at '/agent/compile/concurrency'", id="a compile pool of no slot"
        ),
    ],
)
def test_schema_refuses_bad_values(helm_home: Path, value: str, error: str):
    result = helm(helm_home, "template", "r", str(CHART), "--set", value)
    assert result.returncode != 0, result.stdout
    assert "values don't meet the specifications of the schema" in result.stderr
    assert error in result.stderr, result.stderr


def test_replicas_schema_explains_leader_election():
    replicas = json.loads((CHART / "values.schema.json").read_text())["properties"]["operator"]
    replicas = replicas["properties"]["replicas"]
    assert replicas["maximum"] == 5
    assert "leader election" in replicas["description"]


def test_rendered_defaults_are_what_the_docs_promise(helm_home: Path):
    by_kind = rendered(helm_home)
    deployment = by_kind[("Deployment", "r-bpfleet-operator")]
    assert deployment["spec"]["replicas"] == 1
    assert deployment["spec"]["strategy"] == {"type": "RollingUpdate"}
    [operator] = deployment["spec"]["template"]["spec"]["containers"]
    env = env_of(operator)
    assert env["BPFLEET_LEADER_ELECT"]["value"] == "true"
    assert env["POD_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    assert operator["image"] == "bpfleet/operator:0.1.0"
    assert operator["command"] == ["bpfleet-operator"]
    assert operator["args"] == ["--liveness", "http://0.0.0.0:8080/healthz"]
    assert operator["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "healthz"}
    assert {"name": "BPFLEET_LOG_LEVEL", "value": "INFO"} in operator["env"]
    assert env["BPFLEET_DELETE_GRACE_SECONDS"]["value"] == "300"
    assert env["BPFLEET_SYSTEM_NAMESPACE"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.namespace"}}

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
    agent = agent_container(by_kind)
    assert agent["image"] == "bpfleet/agent:0.1.0"
    assert agent["command"] == ["bpfleet-agent"]
    assert agent["securityContext"] == {"privileged": True}
    env = env_of(agent)
    assert env["NODE_NAME"]["valueFrom"] == {"fieldRef": {"fieldPath": "spec.nodeName"}}
    assert env["BPFLEET_SYSTEM_NAMESPACE"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.namespace"}}
    assert env["BPFLEET_MAX_MAP_BYTES"]["value"] == "67108864"
    assert env["BPFLEET_COMPILE_CONCURRENCY"]["value"] == "2"
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
        "/var/lib/bpfleet/bytecode": "/var/lib/bpfleet/bytecode",
    }
    assert mounts["/sys/fs/bpf"][1]["mountPropagation"] == "Bidirectional"
    assert all(mounts[p][1].get("readOnly") for p in ("/host/proc", "/lib/modules", "/usr/src"))

    with_root = agent_container(
        rendered(helm_home, "--set", "agent.kubeletCgroupRoot=/sys/fs/cgroup/unified")
    )
    assert env_of(with_root)["BPFLEET_KUBELET_CGROUP_ROOT"]["value"] == "/sys/fs/cgroup/unified"


def test_cluster_roles_have_no_wildcards(helm_home: Path):
    roles = [d for d in rendered(helm_home).values() if d["kind"] == "ClusterRole"]
    assert len(roles) == 5
    for role in roles:
        for rule in role["rules"]:
            for field in ("apiGroups", "resources", "verbs"):
                assert "*" not in rule[field], f"{role['metadata']['name']}: {rule}"


# --- the agent's metrics endpoint ------------------------------------------------------------------


def test_agent_metrics_listen_on_loopback_by_default(helm_home: Path, monkeypatch: pytest.MonkeyPatch):
    agent = agent_container(rendered(helm_home))
    assert env_of(agent)["BPFLEET_METRICS_ADDRESS"]["value"] == "127.0.0.1:9101"
    # kubelet probes from the node (the agent is on the host network): loopback reaches it.
    assert agent["livenessProbe"]["httpGet"] == {"host": "127.0.0.1", "path": "/healthz", "port": "metrics"}
    assert agent["ports"] == [{"name": "metrics", "containerPort": 9101, "protocol": "TCP"}]

    # The agent's own default, when nothing sets the address, is the same.
    monkeypatch.delenv("BPFLEET_METRICS_ADDRESS", raising=False)
    assert parse_args(["--node", "n"]).metrics_address == "127.0.0.1:9101"


@pytest.mark.parametrize(
    ("bind", "port", "address", "probe_host"),
    [
        pytest.param("0.0.0.0", 9101, "0.0.0.0:9101", "127.0.0.1", id="every IPv4 address"),
        pytest.param("::", 9101, "[::]:9101", "::1", id="every IPv6 address"),
        pytest.param("10.1.2.3", 9200, "10.1.2.3:9200", "10.1.2.3", id="one node address"),
        pytest.param("::1", 9102, "[::1]:9102", "::1", id="IPv6 loopback"),
    ],
)
def test_agent_metrics_bind_address(helm_home: Path, bind: str, port: int, address: str, probe_host: str):
    agent = agent_container(
        rendered(
            helm_home,
            "--set-string",
            f"agent.metrics.bindAddress={bind}",
            "--set",
            f"agent.metrics.port={port}",
        )
    )
    assert env_of(agent)["BPFLEET_METRICS_ADDRESS"]["value"] == address
    assert agent["livenessProbe"]["httpGet"]["host"] == probe_host
    assert agent["ports"][0]["containerPort"] == port


# --- the agents' node binding ----------------------------------------------------------------------

POLICIES = ["r-bpfleet-agent-bpfleetnodes", "r-bpfleet-agent-ebpfnodestates"]


def policies(objects: dict[tuple[str, str], dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {name: obj for (kind, name), obj in objects.items() if kind == "ValidatingAdmissionPolicy"}


@pytest.mark.parametrize(
    ("flags", "user"),
    [
        pytest.param([], "system:serviceaccount:bpfleet-system:r-bpfleet-agent", id="the chart's account"),
        pytest.param(
            ["--set", "agent.serviceAccount.create=false", "--set", "agent.serviceAccount.name=node-agent"],
            "system:serviceaccount:bpfleet-system:node-agent",
            id="an existing account",
        ),
    ],
)
def test_node_binding_policies_bind_the_agents_service_account(helm_home: Path, flags: list[str], user: str):
    objects = rendered(helm_home, *flags)
    found = policies(objects)
    assert sorted(found) == POLICIES
    for name, policy in found.items():
        spec = policy["spec"]
        assert spec["failurePolicy"] == "Fail"
        assert [c["expression"] for c in spec["matchConditions"]] == [
            f'request.userInfo.username == "{user}"'
        ]
        # A 403 like RBAC's, never the default 422.
        assert {v.get("reason") for v in spec["validations"]} == {"Forbidden"}, name
        binding = objects[("ValidatingAdmissionPolicyBinding", name)]["spec"]
        assert binding == {"policyName": name, "validationActions": ["Deny"]}
    resources = {
        r
        for p in found.values()
        for rule in p["spec"]["matchConstraints"]["resourceRules"]
        for r in rule["resources"]
    }
    assert resources == {"ebpfnodestates", "ebpfnodestates/status", "bpfleetnodes", "bpfleetnodes/status"}


def test_node_binding_can_be_left_out(helm_home: Path):
    objects = rendered(helm_home, "--set", "agent.nodeRestriction=false")
    assert not {kind for kind, _ in objects if kind.startswith("ValidatingAdmissionPolicy")}


# --- the roles of a namespace's users --------------------------------------------------------------

WRITES = {"create", "update", "patch", "delete", "deletecollection"}
ADMINS_ONLY = {"ebpfnodestates", "ebpfnodestates/status", "bpfleetnodes", "bpfleetnodes/status"}
# Not even read access: a version holds a program's whole source, a node state every program's entry.
UNSEEN = {"ebpfprogramversions", "ebpfnodestates", "ebpfnodestates/status"}


def aggregated(objects: dict[tuple[str, str], dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {
        name: role
        for (kind, name), role in objects.items()
        if kind == "ClusterRole"
        and any(k.startswith("rbac.authorization.k8s.io/aggregate-to-") for k in role["metadata"]["labels"])
    }


def test_tenant_roles_aggregate_programs_and_nothing_of_the_admins(helm_home: Path):
    roles = aggregated(rendered(helm_home))
    assert sorted(roles) == ["r-bpfleet-edit", "r-bpfleet-view"]
    labels = {
        name: {k.rsplit("-", 1)[-1] for k in r["metadata"]["labels"] if "aggregate-to-" in k}
        for name, r in roles.items()
    }
    assert labels == {"r-bpfleet-edit": {"admin", "edit"}, "r-bpfleet-view": {"admin", "edit", "view"}}
    for name, role in roles.items():
        for rule in role["rules"]:
            resources, verbs = set(rule["resources"]), set(rule["verbs"])
            assert "clusterebpfprograms" not in resources, name
            assert not any(r.startswith("clusterebpfprograms") for r in resources), name
            if resources & (ADMINS_ONLY | {"ebpfprograms/status"}):
                assert not verbs & WRITES, f"{name}: {rule}"
            assert not resources & UNSEEN, f"{name}: {rule}"
    edit = roles["r-bpfleet-edit"]["rules"]
    assert {"ebpfprograms"} in [set(r["resources"]) for r in edit if WRITES <= set(r["verbs"])]


def test_tenant_roles_can_be_left_out(helm_home: Path):
    objects = rendered(helm_home, "--set", "rbac.aggregateToDefaultRoles=false")
    assert not aggregated(objects)
    assert ("ClusterRole", "r-bpfleet-cluster-programs") in objects
    assert not [
        k for k in rendered(helm_home, "--set", "rbac.create=false") if k[0].startswith("ClusterRole")
    ]
