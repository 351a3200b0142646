"""Acceptance: the API server itself refuses invalid EbpfPrograms, with a message naming the problem;
the rules both kinds share refuse either kind (ClusterEbpfPrograms: test_cluster_crd_validation.py)."""

from __future__ import annotations

import json
from typing import Any

import pytest
import yaml

from e2e.harness import kubectl_run
from e2e.kube import Kube
from e2e.tools import REPO_ROOT
from tests.apiserver.dry_run import (
    CLUSTER_VALID,
    PRINTER_COLUMNS,
    TENANT_VALID,
    assert_accepted,
    assert_refused,
    spec_variant,
)

pytestmark = pytest.mark.apiserver


def variant(**spec_changes: Any) -> dict[str, Any]:
    return spec_variant(TENANT_VALID, **spec_changes)


def test_examples_are_accepted(crds: Kube):
    for example in sorted((REPO_ROOT / "examples").glob("*.yaml")):
        manifest = yaml.safe_load(example.read_text())
        if manifest.get("kind") not in ("EbpfProgram", "ClusterEbpfProgram"):
            continue
        assert_accepted(crds, manifest, f"{example.name}: ")


@pytest.mark.parametrize("base", [TENANT_VALID, CLUSTER_VALID], ids=["EbpfProgram", "ClusterEbpfProgram"])
@pytest.mark.parametrize(
    ("changes", "message"),
    [
        pytest.param(
            {"source": {"builtin": "egress-port-deny", "inline": "int x;"}},
            "source must set exactly one of builtin, inline, configMapRef or bytecode",
            id="two sources",
        ),
        pytest.param(
            {"source": {}},
            "source must set exactly one of builtin, inline, configMapRef or bytecode",
            id="no source",
        ),
        pytest.param(
            {"attach": {"type": "Tracepoint"}},
            "attach.name (category:event, e.g. syscalls:sys_enter_openat) is required for type Tracepoint",
            id="tracepoint without a name",
        ),
        pytest.param(
            {"function": "bpfleet_pod_filter"},
            "function names starting with bpfleet_ are reserved for the agent",
            id="reserved function name",
        ),
    ],
)
def test_rules_both_kinds_share_refuse_either_kind(
    crds: Kube, base: dict[str, Any], changes: dict[str, Any], message: str
):
    assert_refused(crds, spec_variant(base, **changes), message)


INLINE_64K_PLUS_ONE = "x" * (64 * 1024 + 1)


@pytest.mark.parametrize(
    ("manifest", "message"),
    [
        pytest.param(
            variant(attach={"type": "Uprobe2"}),
            'spec.attach.type: Unsupported value: "Uprobe2": supported values: "CgroupSkb", "CgroupSockAddr"',
            id="unknown attach type",
        ),
        pytest.param(
            variant(attach={"type": "CgroupSockAddr", "hook": "Connect4", "direction": "Egress"}),
            "attach.direction (Ingress or Egress) is required for types CgroupSkb and Tc "
            "and not allowed for any other type",
            id="direction on the wrong type",
        ),
        pytest.param(
            variant(attach={"type": "CgroupSkb"}),
            "attach.direction (Ingress or Egress) is required for types CgroupSkb and Tc",
            id="direction missing",
        ),
        pytest.param(
            variant(attach={"type": "CgroupSkb", "direction": "Egress", "hook": "Connect4"}),
            "attach.hook is required for type CgroupSockAddr (Connect4, Connect6, Sendmsg4",
            id="hook on the wrong type",
        ),
        pytest.param(
            variant(attach={"type": "CgroupSock", "hook": "Connect4"}),
            "must be one of that type's hooks",
            id="hook of another type",
        ),
        pytest.param(
            variant(attach={"type": "Tracepoint", "name": "sys_enter_openat"}),
            "spec.attach.name in body should match",
            id="tracepoint name without its category",
        ),
        pytest.param(
            variant(attach={"type": "CgroupSkb", "direction": "Egress", "interface": "eth0"}),
            "attach.interface is only for types Tc and Xdp",
            id="interface on a cgroup type",
        ),
        pytest.param(
            variant(attach={"type": "Xdp", "side": "Host"}),
            "attach.side (Pod or Host) is only for type Tc",
            id="side on Xdp",
        ),
        pytest.param(
            variant(attach={"type": "Tc", "direction": "Ingress", "mode": "Native"}),
            "attach.mode (Generic, Native or Auto) is only for type Xdp",
            id="mode on Tc",
        ),
        pytest.param(
            variant(attach={"type": "Kprobe"}),
            "attach.function (a kernel function) is required for types Kprobe and Kretprobe",
            id="kprobe without a function",
        ),
        pytest.param(
            variant(attach={"type": "CgroupSysctl", "function": "do_sys_open"}),
            "attach.function (a kernel function) is required for types Kprobe and Kretprobe and not allowed",
            id="kernel function on a cgroup type",
        ),
        pytest.param(
            variant(attach={"type": "Uprobe", "symbol": "main"}),
            "attach.binary (an absolute path inside the container) is required for types Uprobe and "
            "Uretprobe",
            id="uprobe without a binary",
        ),
        pytest.param(
            variant(attach={"type": "Tracepoint", "name": "sched:sched_process_exec", "binary": "/bin/sh"}),
            "attach.binary (an absolute path inside the container) is required for types Uprobe and "
            "Uretprobe and not allowed for any other type",
            id="binary on a tracepoint",
        ),
        pytest.param(
            variant(attach={"type": "Uprobe", "binary": "bin/sh", "symbol": "main"}),
            "spec.attach.binary in body should match '^/",
            id="relative binary path",
        ),
        pytest.param(
            variant(attach={"type": "Uretprobe", "binary": "/bin/sh", "symbol": "main", "offset": 4096}),
            "types Uprobe and Uretprobe need exactly one of attach.symbol (an ELF symbol) and attach.offset",
            id="uprobe with symbol and offset",
        ),
        pytest.param(
            variant(attach={"type": "Uprobe", "binary": "/bin/sh"}),
            "types Uprobe and Uretprobe need exactly one of attach.symbol (an ELF symbol) and attach.offset",
            id="uprobe with neither symbol nor offset",
        ),
        pytest.param(
            variant(attach={"type": "CgroupSkb", "direction": "Egress", "offset": 4096}),
            "other types take neither",
            id="offset on a cgroup type",
        ),
        pytest.param(
            variant(attach={"type": "Uprobe", "binary": "/bin/sh", "offset": -1}),
            "spec.attach.offset in body should be greater than or equal to 0",
            id="negative offset",
        ),
        pytest.param(
            variant(attach={"type": "Tracepoint", "name": "sched:sched_process_exec", "container": "app"}),
            "attach.container is only for types Uprobe and Uretprobe",
            id="container on a tracepoint",
        ),
        pytest.param(
            variant(attach={"type": "Uprobe", "binary": "/bin/sh", "symbol": "main", "container": "App_1"}),
            "spec.attach.container in body should match",
            id="container not a container name",
        ),
        pytest.param(
            variant(parameters={"1PORT": 80}),
            "parameter names must be C identifiers",
            id="parameter name not a C identifier",
        ),
        pytest.param(
            variant(parameters={"PORT": '80"); system("x'}),
            "parameter values must be integers or strings of letters, digits",
            id="parameter value with code in it",
        ),
        pytest.param(
            variant(source={"inline": INLINE_64K_PLUS_ONE}),
            "spec.source.inline: Too long: may not be more than 65536 bytes",
            id="inline source over 64 KiB",
        ),
        pytest.param(
            variant(function="not a function"),
            "spec.function in body should match",
            id="function not an identifier",
        ),
        pytest.param(variant(podSelector=None), "spec.podSelector: Required value", id="no podSelector"),
        pytest.param(
            variant(attach={"type": "Tc", "direction": "Ingress", "side": "Host"}),
            "attach.side Host reaches the node's side of the pod network: use a ClusterEbpfProgram",
            id="tenant on the host side",
        ),
        pytest.param(
            variant(attach={"type": "Kprobe", "function": "do_sys_openat2"}),
            "types Kprobe and Kretprobe trace the whole node's kernel, not only this namespace's pods: "
            "use a ClusterEbpfProgram",
            id="tenant kprobe",
        ),
        pytest.param(
            variant(attach={"type": "Kretprobe", "function": "do_sys_openat2"}),
            "use a ClusterEbpfProgram",
            id="tenant kretprobe",
        ),
    ],
)
def test_invalid_manifests_are_refused_with_a_clear_message(
    crds: Kube, manifest: dict[str, Any], message: str
):
    assert_refused(crds, manifest, message)


@pytest.mark.parametrize(
    "attach",
    [
        {"type": "Uprobe", "binary": "/bin/target", "symbol": "bpfleet_probe_target"},
        {
            "type": "Uretprobe",
            "binary": "/usr/lib/x86_64-linux-gnu/libc.so.6",
            "offset": 4096,
            "container": "app",
        },
        {"type": "Uprobe", "binary": "/app/server", "symbol": "main.(*Server).handle"},
    ],
)
def test_uprobe_attachments_are_accepted(crds: Kube, attach: dict[str, Any]):
    assert_accepted(
        crds, variant(source={"builtin": "uprobe-call-counter"}, function="count_calls", attach=attach)
    )


def test_a_valid_manifest_is_stored_with_printer_columns(crds: Kube):
    crds.apply("default", TENANT_VALID)
    try:
        header = crds.kubectl("get", "ebpf", "-n", "default").splitlines()[0].split()
        assert header == PRINTER_COLUMNS
    finally:
        # No operator runs in this tier: drop the finalizer-free object directly.
        crds.kubectl("delete", "ebpf", "-n", "default", TENANT_VALID["metadata"]["name"], "--wait=false")


def test_a_tenant_cannot_set_cluster_fields(crds: Kube):
    # Unknown fields are pruned, never honoured: a tenant's program has no scope and no cap of its own.
    manifest = variant(scope="Node", maxMapBytes=1 << 40, namespaceSelector={})
    result = kubectl_run(
        crds.kubeconfig,
        "create",
        "--dry-run=server",
        "--validate=false",
        "-n",
        "default",
        "-o",
        "json",
        "-f",
        "-",
        input=yaml.safe_dump(manifest),
    )
    assert result.returncode == 0, result.stderr
    spec = json.loads(result.stdout)["spec"]
    assert not {"scope", "maxMapBytes", "namespaceSelector"} & set(spec)
