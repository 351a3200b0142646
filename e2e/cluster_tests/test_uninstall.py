"""Uninstalling the way docs/install.md says (programs first, then `helm uninstall`) leaves nothing
in the agents' bpffs directory and no program on any pod's cgroup. The release is installed again
afterwards with the values it had, for whatever runs next. Runs last (the file sorts last)."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator

import pytest
import yaml

from e2e.cluster_tests import agents, nodeside, traffic
from e2e.cluster_tests.conftest import INSTALL_NAMESPACE, _installed
from e2e.cluster_tests.test_agent_rollout import COUNTER, PROGRAM, RELEASE, helm
from e2e.harness import wait_for
from e2e.kube import Kube
from e2e.tools import REPO_ROOT

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(600)]


@pytest.fixture
def reinstalled(kube: Kube) -> Iterator[None]:
    values = subprocess.run(
        [
            helm(),
            "--kubeconfig",
            str(kube.kubeconfig),
            "get",
            "values",
            RELEASE,
            "-n",
            INSTALL_NAMESPACE,
            "-o",
            "yaml",
        ],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    yield
    subprocess.run(
        [
            helm(),
            "--kubeconfig",
            str(kube.kubeconfig),
            "upgrade",
            "--install",
            RELEASE,
            str(REPO_ROOT / "charts" / "bpfleet"),
            "-n",
            INSTALL_NAMESPACE,
            "--skip-crds",
            "-f",
            "-",
            "--wait",
            "--timeout",
            "5m",
        ],
        input=values if yaml.safe_load(values) else "{}",
        check=True,
        capture_output=True,
        text=True,
    )
    wait_for("bpfleet ready again", lambda: _installed(kube), timeout=180, interval=2)


def test_helm_uninstall_leaves_no_pin_and_no_attachment(
    kube: Kube, namespace: str, reinstalled: None
) -> None:
    node, _ = traffic.start_client(kube, namespace)
    kube.apply(namespace, COUNTER)
    wait_for("READY True", lambda: kube.is_ready(namespace, PROGRAM), timeout=180, interval=1)
    image, bpffs = agents.image(kube), agents.bpffs_root(kube)
    uid = kube.core.read_namespaced_pod("web-1", namespace).metadata.uid
    found = nodeside.inspect(kube, namespace, node, image, [uid], bpffs)
    assert found["cgroups"][uid]["programs"] and found["bpffs"], found  # what must go, there before

    kube.kubectl("delete", "ebpf,cebpf", "--all", "-A", "--wait=true", "--timeout=120s")
    subprocess.run(
        [
            helm(),
            "--kubeconfig",
            str(kube.kubeconfig),
            "uninstall",
            RELEASE,
            "-n",
            INSTALL_NAMESPACE,
            "--wait",
            "--timeout",
            "3m",
        ],
        check=True,
        capture_output=True,
    )
    # The DaemonSet is gone at once, its pods once garbage collection and kubelet are done with them.
    wait_for("no agent pod", lambda: agents.pods(kube) == [], timeout=120, interval=1)

    every_pod = {p.metadata.uid: p for p in kube.core.list_pod_for_all_namespaces().items if p.spec.node_name}
    for on in {p.spec.node_name for p in every_pod.values()}:
        uids = [uid for uid, p in every_pod.items() if p.spec.node_name == on]
        found = nodeside.inspect(kube, namespace, on, image, uids, bpffs)
        assert found["bpffs"] in (None, []), found
        assert {uid: c["programs"] for uid, c in found["cgroups"].items() if c["programs"]} == {}, found
