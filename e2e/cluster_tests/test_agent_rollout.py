"""The data plane outlives the agent pod: deleting it (the DaemonSet makes another) or rolling the
DaemonSet to another image with `helm upgrade` loses no packet and counts none twice."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Iterator

import pytest

from e2e.cluster_tests import agents, nodeside, traffic
from e2e.cluster_tests.conftest import INSTALL_NAMESPACE
from e2e.harness import wait_for
from e2e.kube import Kube
from e2e.tools import REPO_ROOT, ToolNotInstalledError, tool_path

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(600)]

COUNTER = REPO_ROOT / "examples" / "pod-traffic-counter.yaml"
PROGRAM = "web-egress-traffic"
RELEASE = os.environ.get("BPFLEET_CLUSTER_RELEASE", "bpfleet")
# A second tag of the agent's image, present on every node (make cluster-up and make kind-up make it).
UPGRADE_TAG_ENV = "BPFLEET_CLUSTER_UPGRADE_AGENT_TAG"
SENDING_SECONDS = 30.0


def helm() -> str:
    try:
        return str(tool_path("helm"))
    except ToolNotInstalledError:
        found = shutil.which("helm")
        if found is None:
            pytest.fail("helm is neither in bpfleet's cache nor on PATH", pytrace=False)
        return found


def counted_ready(kube: Kube, namespace: str) -> tuple[str, str]:
    """A selected pod with the counter attached; its node and the node's address."""
    node, host = traffic.start_client(kube, namespace)
    kube.apply(namespace, COUNTER)
    wait_for("READY True", lambda: kube.is_ready(namespace, PROGRAM), timeout=180, interval=1)
    return node, host


def assert_all_counted(kube: Kube, namespace: str, node: str, before: float, sent: int) -> None:
    """Exactly what was sent, once the new agent exports it (it reads the pinned map)."""
    wait_for(
        "the new agent exports the pod",
        lambda: agents.packets(kube, node, namespace, "web-1", PROGRAM) is not None,
        timeout=60,
        interval=1,
    )
    assert agents.packets(kube, node, namespace, "web-1", PROGRAM) == before + sent


def one_program_on(kube: Kube, namespace: str, node: str) -> None:
    uid = kube.core.read_namespaced_pod("web-1", namespace).metadata.uid
    found = nodeside.inspect(kube, namespace, node, agents.image(kube), [uid], agents.bpffs_root(kube))
    assert len(found["cgroups"][uid]["programs"]) == 1, found  # adopted, not attached a second time


def test_deleting_the_agent_pod_loses_and_doubles_no_packet(kube: Kube, namespace: str) -> None:
    node, host = counted_ready(kube, namespace)
    old = agents.ready_pod(kube, node)
    assert old is not None
    before = agents.packets(kube, node, namespace, "web-1", PROGRAM) or 0
    started = time.monotonic()
    with traffic.steady_udp(kube, namespace, "web-1", host, SENDING_SECONDS) as sender:
        time.sleep(3)
        kube.kubectl(
            "delete", "pod", "-n", INSTALL_NAMESPACE, old.metadata.name, "--wait=true", "--timeout=60s"
        )
        wait_for(
            "a new agent Ready", lambda: agents.ready_pod(kube, node) is not None, timeout=120, interval=0.5
        )
        new = agents.ready_pod(kube, node)
        assert new.metadata.name != old.metadata.name  # the DaemonSet made another
        # The restart happened while the pod was sending, not after.
        assert time.monotonic() - started < SENDING_SECONDS, "the agent came back after the traffic ended"
    assert sender.sent and sender.sent > SENDING_SECONDS * 10
    assert_all_counted(kube, namespace, node, before, sender.sent)
    one_program_on(kube, namespace, node)


@pytest.fixture
def upgrade_tag(kube: Kube) -> Iterator[str]:
    """The other tag; afterwards the release goes back to the values it had."""
    tag = os.environ.get(UPGRADE_TAG_ENV)
    if not tag:
        pytest.fail(
            f"{UPGRADE_TAG_ENV} is not set: a second tag of the agent image, present on the nodes "
            "(make cluster-test and make kind-test set it)",
            pytrace=False,
        )
    original = agents.image(kube).rpartition(":")[2]
    yield tag
    upgrade(kube, original)


def upgrade(kube: Kube, tag: str) -> None:
    subprocess.run(
        [
            helm(),
            "--kubeconfig",
            str(kube.kubeconfig),
            "upgrade",
            RELEASE,
            str(REPO_ROOT / "charts" / "bpfleet"),
            "-n",
            INSTALL_NAMESPACE,
            "--reuse-values",
            "--skip-crds",
            "--set-string",  # a tag of only digits stays a string
            f"agent.image.tag={tag}",
            "--wait",
            "--timeout",
            "5m",
        ],
        check=True,
        capture_output=True,
    )
    kube.kubectl(
        "rollout",
        "status",
        "-n",
        INSTALL_NAMESPACE,
        f"daemonset/{agents.daemon_set(kube).metadata.name}",
        "--timeout=180s",
    )


def test_a_helm_upgrade_of_the_agent_image_loses_and_doubles_no_packet(
    kube: Kube, namespace: str, upgrade_tag: str
) -> None:
    node, host = counted_ready(kube, namespace)
    before = agents.packets(kube, node, namespace, "web-1", PROGRAM) or 0
    started = time.monotonic()
    with traffic.steady_udp(kube, namespace, "web-1", host, SENDING_SECONDS) as sender:
        time.sleep(3)
        upgrade(kube, upgrade_tag)
        assert agents.image(kube).endswith(f":{upgrade_tag}")
        agent = agents.ready_pod(kube, node)
        assert agent is not None and agent.spec.containers[0].image.endswith(f":{upgrade_tag}")
        assert time.monotonic() - started < SENDING_SECONDS, "the rollout ended after the traffic"
    assert_all_counted(kube, namespace, node, before, sender.sent or 0)
    one_program_on(kube, namespace, node)
