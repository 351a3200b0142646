"""Who may do what, on the real API server with the chart installed: a namespace's users (the
built-in admin, edit and view roles, bound with RoleBindings) manage or read that namespace's
EbpfPrograms and nothing of the cluster admins' (ClusterEbpfPrograms, versions, EbpfNodeStates, BpfleetNodes);
a ResourceQuota counts EbpfPrograms."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from e2e.harness import kubectl_run, wait_for
from e2e.kube import Kube
from e2e.tests.programs import cluster_program
from tests.apiserver.chart import (
    Release,
    can_i_params,
    installed_release,
    scratch_namespace,
    unique,
)
from tests.apiserver.chart import can_i as can_i_as
from tests.apiserver.dry_run import TENANT_VALID as EXAMPLE

pytestmark = pytest.mark.apiserver

NODE_WIDE = cluster_program(
    "exec-everywhere",
    {
        "source": {"builtin": "exec-counter"},
        "function": "count_execs",
        "attach": {"type": "Tracepoint", "name": "sched:sched_process_exec"},
        "scope": "Node",
    },
)


@dataclass
class Tenancy:
    kube: Kube
    release: Release
    namespace: str  # the tenants' namespace
    other: str  # a namespace where they have no role
    run: str  # suffix of this module's user names

    def user(self, role: str) -> str:
        return f"{role}-{self.run}"


@pytest.fixture(scope="module")
def tenancy(crds: Kube, helm_home: Path) -> Iterator[Tenancy]:
    """The chart installed; users `admin-*`, `edit-*` and `view-*` hold those built-in roles in one
    namespace, `cluster-view-*` holds view cluster-wide and `cluster-programs-*` the chart's
    ClusterEbpfProgram role."""
    kube = crds
    run = unique("u").split("-", 1)[1]
    with contextlib.ExitStack() as stack:
        release_namespace = stack.enter_context(scratch_namespace(kube, "tenancy-rel"))
        release = stack.enter_context(installed_release(kube, release_namespace, helm_home))
        namespace = stack.enter_context(scratch_namespace(kube, "tenant"))
        other = stack.enter_context(scratch_namespace(kube, "neighbour"))
        tenancy = Tenancy(kube, release, namespace, other, run)
        for role in ("admin", "edit", "view"):
            kube.kubectl(
                "create",
                "rolebinding",
                role,
                "-n",
                namespace,
                f"--clusterrole={role}",
                f"--user={tenancy.user(role)}",
            )
        bindings = {
            f"cluster-view-{run}": "view",
            f"cluster-programs-{run}": f"{release.name}-bpfleet-cluster-programs",
        }
        for user, role in bindings.items():
            kube.kubectl("create", "clusterrolebinding", user, f"--clusterrole={role}", f"--user={user}")
            stack.callback(
                kube.kubectl, "delete", "clusterrolebinding", user, "--ignore-not-found", check=False
            )
        # The controller manager fills the built-in roles from the aggregated ones.
        wait_for(
            "edit and view to aggregate the chart's roles",
            lambda: (
                can_i(tenancy, "edit", "create ebpfprograms.bpfleet.io")
                and can_i(tenancy, "view", "list ebpfprograms.bpfleet.io")
            ),
            timeout=30,
            interval=0.2,
        )
        yield tenancy


def can_i(tenancy: Tenancy, role: str, ask: str) -> bool:
    args = ask.split()
    # As the real requests are: cluster-scoped objects in no namespace, the others in the tenants'.
    cluster_scoped = args[1].split(".")[0] in ("bpfleetnodes", "clusterebpfprograms", "ebpfnodestates")
    if not cluster_scoped and not any(a in ("-n", "-A") for a in args):
        args += ["-n", tenancy.namespace]
    if "neighbour" in args:
        args[args.index("neighbour")] = tenancy.other
    return can_i_as(tenancy.kube, tenancy.user(role), *args)


def create_as(
    tenancy: Tenancy, role: str, manifest: dict[str, Any], namespace: str | None = None
) -> tuple[bool, str]:
    namespaced = ["-n", namespace or tenancy.namespace] if manifest["kind"] != "ClusterEbpfProgram" else []
    result = kubectl_run(
        tenancy.kube.kubeconfig,
        *("create", *namespaced, "-f", "-", "--as", tenancy.user(role)),
        input=yaml.safe_dump(manifest),
    )
    return result.returncode == 0, result.stdout + result.stderr


def program(name: str) -> dict[str, Any]:
    return {**EXAMPLE, "metadata": {"name": name}}


# (role, what it asks, granted?): the table "Who may do what" of docs/install.md.
CAN_I = [
    ("edit", "create ebpfprograms.bpfleet.io", True),
    ("edit", "update ebpfprograms.bpfleet.io", True),
    ("edit", "delete ebpfprograms.bpfleet.io", True),
    ("edit", "get ebpfprograms.bpfleet.io --subresource=status", True),
    ("edit", "patch ebpfprograms.bpfleet.io --subresource=status", False),
    ("edit", "create ebpfprograms.bpfleet.io -n neighbour", False),
    # Versions and node states are cluster admins' alone: not even read.
    ("edit", "get ebpfprogramversions.bpfleet.io", False),
    ("edit", "create ebpfprogramversions.bpfleet.io", False),
    ("edit", "delete ebpfprogramversions.bpfleet.io", False),
    ("edit", "create ebpfprogramplacements.bpfleet.io", False),
    ("edit", "patch ebpfprogramplacements.bpfleet.io", False),
    ("edit", "list ebpfnodestates.bpfleet.io", False),
    ("edit", "patch ebpfnodestates.bpfleet.io", False),
    ("edit", "patch ebpfnodestates.bpfleet.io --subresource=status", False),
    ("edit", "create clusterebpfprograms.bpfleet.io", False),
    ("edit", "list clusterebpfprograms.bpfleet.io", False),
    ("edit", "patch bpfleetnodes.bpfleet.io --subresource=status", False),
    ("admin", "create ebpfprograms.bpfleet.io", True),
    ("admin", "deletecollection ebpfprograms.bpfleet.io", True),
    ("admin", "patch ebpfprograms.bpfleet.io --subresource=status", False),
    ("admin", "create ebpfprogramversions.bpfleet.io", False),
    ("admin", "list ebpfprogramversions.bpfleet.io", False),
    ("admin", "create ebpfprogramplacements.bpfleet.io", False),
    ("admin", "delete ebpfprogramplacements.bpfleet.io", False),
    ("admin", "create ebpfnodestates.bpfleet.io", False),
    ("admin", "create clusterebpfprograms.bpfleet.io", False),
    ("admin", "create bpfleetnodes.bpfleet.io", False),
    ("view", "watch ebpfprograms.bpfleet.io", True),
    ("view", "get ebpfprogramversions.bpfleet.io", False),
    ("view", "create ebpfprograms.bpfleet.io", False),
    ("view", "delete ebpfprograms.bpfleet.io", False),
    # A RoleBinding does not reach cluster-scoped objects; a ClusterRoleBinding to view does.
    ("view", "list bpfleetnodes.bpfleet.io", False),
    ("cluster-view", "list bpfleetnodes.bpfleet.io", True),
    ("cluster-view", "list ebpfprogramversions.bpfleet.io -A", False),
    ("cluster-view", "list ebpfnodestates.bpfleet.io", False),
    ("cluster-view", "patch bpfleetnodes.bpfleet.io --subresource=status", False),
    ("cluster-view", "list clusterebpfprograms.bpfleet.io", False),
    ("cluster-programs", "create clusterebpfprograms.bpfleet.io", True),
    ("cluster-programs", "patch clusterebpfprograms.bpfleet.io --subresource=status", False),
    ("cluster-programs", "list ebpfprogramversions.bpfleet.io -A", True),
    ("cluster-programs", "list ebpfprogramplacements.bpfleet.io -A", True),
    ("cluster-programs", "patch ebpfprogramplacements.bpfleet.io -A", False),
    ("cluster-programs", "list ebpfnodestates.bpfleet.io", True),
    ("cluster-programs", "patch ebpfnodestates.bpfleet.io", False),
    ("cluster-programs", "delete ebpfprogramversions.bpfleet.io -A", False),
]


@pytest.mark.parametrize(("role", "ask", "allowed"), can_i_params(CAN_I))
def test_roles_grant_only_the_table(tenancy: Tenancy, role: str, ask: str, allowed: bool):
    assert can_i(tenancy, role, ask) is allowed


def test_edit_creates_programs_and_nothing_of_the_admins(tenancy: Tenancy):
    created, output = create_as(tenancy, "edit", program(unique("mine")))
    assert created, output

    version = {
        "apiVersion": "bpfleet.io/v1alpha1",
        "kind": "EbpfProgramVersion",
        "metadata": {"name": unique("forged")},
        "spec": {
            "programKind": "EbpfProgram",
            "programName": "x",
            "source": {"text": "x", "sha256": "0" * 64},
            "function": "f",
            "attach": {"type": "CgroupSkb", "direction": "Egress"},
            "podSelector": {},
            "contentHash": "0" * 64,
        },
    }
    for manifest, plural in ((version, "ebpfprogramversions"), (NODE_WIDE, "clusterebpfprograms")):
        created, output = create_as(tenancy, "edit", manifest)
        assert not created
        assert "Forbidden" in output and f'cannot create resource "{plural}"' in output, output


def test_cluster_programs_are_for_cluster_admins(tenancy: Tenancy):
    """cluster-admin (the test's own user) and holders of the chart's cluster-programs role."""
    result = tenancy.kube.kubectl(
        "create", "--dry-run=server", "-o", "json", "-f", "-", input=json.dumps(NODE_WIDE)
    )
    assert json.loads(result)["spec"]["scope"] == "Node"
    name = unique("cp")
    try:
        created, output = create_as(tenancy, "cluster-programs", {**NODE_WIDE, "metadata": {"name": name}})
        assert created, output
    finally:
        tenancy.kube.kubectl(
            "delete", "clusterebpfprograms.bpfleet.io", name, "--ignore-not-found", check=False
        )


def test_a_quota_counts_programs(tenancy: Tenancy):
    with scratch_namespace(tenancy.kube, "quota") as namespace:
        tenancy.kube.kubectl(
            "create",
            "rolebinding",
            "edit",
            "-n",
            namespace,
            "--clusterrole=edit",
            f"--user={tenancy.user('edit')}",
        )
        quota = {
            "apiVersion": "v1",
            "kind": "ResourceQuota",
            "metadata": {"name": "ebpf-programs"},
            "spec": {"hard": {"count/ebpfprograms.bpfleet.io": "1"}},
        }
        tenancy.kube.apply(namespace, quota)

        def counted() -> bool:
            # Admission refuses what a quota counts until the controller has computed its usage.
            status = tenancy.kube.core.read_namespaced_resource_quota("ebpf-programs", namespace).status
            return status is not None and "count/ebpfprograms.bpfleet.io" in (status.used or {})

        wait_for("the quota controller to count the namespace's programs", counted, timeout=90, interval=0.5)
        created, output = create_as(tenancy, "edit", program("first"), namespace)
        assert created, output
        created, output = create_as(tenancy, "edit", program("second"), namespace)
        assert not created
        assert "exceeded quota: ebpf-programs" in output, output
        assert "limited: count/ebpfprograms.bpfleet.io=1" in output, output
        assert [p["metadata"]["name"] for p in tenancy.kube.programs(namespace)] == ["first"]
