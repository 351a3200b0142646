"""Acceptance: the API server refuses invalid ClusterEbpfPrograms with a message naming the problem,
accepts each scope, and the two program kinds' schemas agree wherever a field means the same (the
rules both kinds share are tried on both in test_crd_validation.py)."""

from __future__ import annotations

import json
from typing import Any

import pytest
import yaml

from e2e.kube import Kube
from e2e.tools import REPO_ROOT
from tests.apiserver.dry_run import (
    CLUSTER_VALID,
    PRINTER_COLUMNS,
    assert_accepted,
    assert_refused,
    spec_variant,
)

pytestmark = pytest.mark.apiserver

POD_SCOPE = {"scope": "Pods", "podSelector": {}}


def cluster_variant(**spec_changes: Any) -> dict[str, Any]:
    return spec_variant(CLUSTER_VALID, **spec_changes)


@pytest.mark.parametrize(
    "manifest",
    [
        pytest.param(CLUSTER_VALID, id="node-wide tracepoint"),
        pytest.param(cluster_variant(attach={"type": "Kprobe", "function": "do_sys_openat2"}), id="kprobe"),
        pytest.param(
            cluster_variant(attach={"type": "Kretprobe", "function": "do_sys_openat2"}, maxMapBytes=1 << 20),
            id="kretprobe with a map cap",
        ),
        pytest.param(
            cluster_variant(
                source={"builtin": "tc-port-drop"},
                function="drop_port",
                attach={"type": "Tc", "direction": "Ingress", "interface": "eth*"},
                parameters={"PORT": 23},
            ),
            id="tc on host interfaces",
        ),
        pytest.param(
            cluster_variant(attach={"type": "Xdp", "interface": "ens[0-9]*", "mode": "Generic"}),
            id="xdp on host interfaces",
        ),
        pytest.param(
            cluster_variant(
                **POD_SCOPE,
                namespaceSelector={"matchLabels": {"team": "web"}},
                attach={"type": "CgroupSkb", "direction": "Egress"},
            ),
            id="pods of selected namespaces",
        ),
        pytest.param(
            cluster_variant(**POD_SCOPE, attach={"type": "Tc", "direction": "Egress", "side": "Host"}),
            id="host side of pods",
        ),
        pytest.param(
            cluster_variant(
                scope=None,
                podSelector={"matchLabels": {"app": "api"}},
                attach={"type": "Uprobe", "binary": "/app/server", "symbol": "main"},
            ),
            id="uprobe, scope Pods by default",
        ),
        pytest.param(
            cluster_variant(
                **POD_SCOPE,
                source={"configMapRef": {"name": "probes", "namespace": "tools", "key": "main.c"}},
                attach={"type": "Xdp", "interface": "net1"},
            ),
            id="config map of another namespace, xdp on a pod interface",
        ),
    ],
)
def test_valid_cluster_programs_are_accepted(crds: Kube, manifest: dict[str, Any]):
    assert_accepted(crds, manifest)


@pytest.mark.parametrize(
    ("manifest", "message"),
    [
        pytest.param(
            cluster_variant(podSelector={}),
            "podSelector is not allowed with scope Node: a node-wide program has no pod filter",
            id="scope Node with a podSelector",
        ),
        pytest.param(
            cluster_variant(scope="Pods"),
            "podSelector is required with scope Pods ({} selects every pod of the selected namespaces)",
            id="scope Pods without a podSelector",
        ),
        pytest.param(
            cluster_variant(scope=None),
            "podSelector is required with scope Pods",
            id="default scope without a podSelector",
        ),
        pytest.param(
            cluster_variant(namespaceSelector={}),
            "namespaceSelector is only for scope Pods: a node-wide program has no pod filter",
            id="scope Node with a namespaceSelector",
        ),
        pytest.param(
            cluster_variant(attach={"type": "Uprobe", "binary": "/bin/sh", "symbol": "main"}),
            "scope Node is for types Tracepoint, Kprobe, Kretprobe, Tc and Xdp; Uprobe, Uretprobe and "
            "the Cgroup types act on pods and need scope Pods",
            id="scope Node uprobe",
        ),
        pytest.param(
            cluster_variant(attach={"type": "CgroupSkb", "direction": "Egress"}),
            "scope Node is for types Tracepoint, Kprobe, Kretprobe, Tc and Xdp",
            id="scope Node cgroup type",
        ),
        pytest.param(
            cluster_variant(attach={"type": "Tc", "direction": "Ingress"}),
            "scope Node with type Tc or Xdp needs attach.interface: a node interface name or pattern, "
            "e.g. eth*",
            id="scope Node tc without an interface",
        ),
        pytest.param(
            cluster_variant(attach={"type": "Xdp"}),
            "scope Node with type Tc or Xdp needs attach.interface",
            id="scope Node xdp without an interface",
        ),
        pytest.param(
            cluster_variant(
                attach={"type": "Tc", "direction": "Ingress", "interface": "eth0", "side": "Pod"}
            ),
            "attach.side is not allowed with scope Node: the program attaches to the node's own interfaces",
            id="scope Node tc with a side",
        ),
        pytest.param(
            cluster_variant(**POD_SCOPE, attach={"type": "Tc", "direction": "Ingress", "interface": "eth*"}),
            "with scope Pods, attach.interface is the pod's interface name",
            id="scope Pods interface pattern",
        ),
        pytest.param(
            cluster_variant(attach={"type": "Xdp", "interface": "eth0; rm -rf /"}),
            "spec.attach.interface in body should match",
            id="interface not a name or pattern",
        ),
        pytest.param(
            cluster_variant(scope="Everywhere"),
            'spec.scope: Unsupported value: "Everywhere": supported values: "Pods", "Node"',
            id="unknown scope",
        ),
        pytest.param(
            cluster_variant(source={"configMapRef": {"name": "probes", "key": "main.c"}}),
            "spec.source.configMapRef.namespace: Required value",
            id="config map without its namespace",
        ),
        pytest.param(
            cluster_variant(maxMapBytes=0),
            "spec.maxMapBytes in body should be greater than or equal to 1",
            id="zero map cap",
        ),
    ],
)
def test_invalid_cluster_programs_are_refused_with_a_clear_message(
    crds: Kube, manifest: dict[str, Any], message: str
):
    assert_refused(crds, manifest, message)


def test_a_cluster_program_is_stored_cluster_scoped_with_the_same_columns(crds: Kube):
    manifest = cluster_variant(scope=None, podSelector={})
    manifest["metadata"]["name"] = "stored-cluster-program"
    crds.kubectl("apply", "-f", "-", input=yaml.safe_dump(manifest))
    try:
        stored = json.loads(crds.kubectl("get", "cebpf", "stored-cluster-program", "-o", "json"))
        assert "namespace" not in stored["metadata"]
        assert stored["spec"]["scope"] == "Pods"  # the default
        header = crds.kubectl("get", "clusterebpfprograms").splitlines()[0].split()
        assert header == PRINTER_COLUMNS
        assert "clusterebpfprograms" in crds.kubectl("api-resources", "--categories=bpfleet", "-o", "name")
    finally:
        crds.kubectl("delete", "cebpf", "stored-cluster-program", "--wait=false")


# --- the two kinds agree where they share a field ---------------------------------------------------


def crd_version(file: str) -> dict[str, Any]:
    return yaml.safe_load((REPO_ROOT / "crds" / file).read_text())["spec"]["versions"][0]


def without_descriptions(schema: Any) -> Any:
    """Descriptions speak of each kind's scope; what is checked is what the API server enforces."""
    if isinstance(schema, dict):
        return {k: without_descriptions(v) for k, v in schema.items() if k != "description"}
    if isinstance(schema, list):
        return [without_descriptions(v) for v in schema]
    return schema


TENANT_ONLY_MESSAGE = "use a ClusterEbpfProgram"


def test_the_shared_parts_of_the_two_program_schemas_match():
    tenant, cluster = (
        crd_version("bpfleet.io_ebpfprograms.yaml"),
        crd_version("bpfleet.io_clusterebpfprograms.yaml"),
    )
    assert cluster["additionalPrinterColumns"] == tenant["additionalPrinterColumns"]
    props = [v["schema"]["openAPIV3Schema"]["properties"] for v in (tenant, cluster)]
    assert props[1]["status"] == props[0]["status"]
    tenant_spec, cluster_spec = (without_descriptions(p["spec"]["properties"]) for p in props)
    for field in ("function", "parameters", "metrics", "nodeSelector", "podSelector"):
        assert cluster_spec[field] == tenant_spec[field], field
    assert cluster_spec["namespaceSelector"] == tenant_spec["podSelector"]
    for field in ("builtin", "inline"):
        assert cluster_spec["source"]["properties"][field] == tenant_spec["source"]["properties"][field]
    assert (
        cluster_spec["source"]["x-kubernetes-validations"]
        == tenant_spec["source"]["x-kubernetes-validations"]
    )
    # attach: the same fields and rules, but for the tenant's refusals and the node interface patterns.
    tenant_attach, cluster_attach = tenant_spec["attach"], cluster_spec["attach"]
    assert set(cluster_attach["properties"]) == set(tenant_attach["properties"])
    for field in set(tenant_attach["properties"]) - {"interface"}:
        assert cluster_attach["properties"][field] == tenant_attach["properties"][field], field
    shared_rules = [
        r for r in tenant_attach["x-kubernetes-validations"] if TENANT_ONLY_MESSAGE not in r["message"]
    ]
    assert len(shared_rules) == len(tenant_attach["x-kubernetes-validations"]) - 2
    assert cluster_attach["x-kubernetes-validations"] == shared_rules
