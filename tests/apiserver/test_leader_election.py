"""Several operator replicas: one leads through a Lease, another takes over when it stops."""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import pytest
from kubernetes.client import CoordinationV1Api

from bpfleet_operator.leader import LeaseLock
from e2e.harness import ManagedProcess, install_crds, operator_process, wait_for
from e2e.kube import Kube

pytestmark = pytest.mark.apiserver


def lock(kube: Kube, name: str, identity: str, seconds: int = 2) -> LeaseLock:
    return LeaseLock(CoordinationV1Api(kube.api), "default", name, identity, lease_seconds=seconds)


def test_one_holder_at_a_time_and_takeover_after_expiry(kube: Kube):
    name = f"lease-{uuid.uuid4().hex[:6]}"
    a, b = lock(kube, name, "a"), lock(kube, name, "b")
    assert a.try_acquire_or_renew()
    assert not b.try_acquire_or_renew()
    assert a.try_acquire_or_renew()  # renewing keeps it
    time.sleep(2.5)  # a stops renewing: its lease expires
    assert b.try_acquire_or_renew()
    assert not a.try_acquire_or_renew()
    assert a.holder() == "b"
    b.release()
    assert a.try_acquire_or_renew()  # released: no wait for expiry


def leader_process(kube: Kube, logs: Path, identity: str) -> ManagedProcess:
    process = operator_process(kube.kubeconfig, logs)
    process.name = f"operator {identity}"
    process.log_path = logs / f"operator-{identity}.log"
    process.env.update({"BPFLEET_LEADER_ELECT": "true", "POD_NAME": identity, "POD_NAMESPACE": "default"})
    return process


def test_a_standby_operator_takes_over_and_reconciles(kube: Kube, tmp_path: Path):
    install_crds(kube.kubeconfig)
    first, second = (leader_process(kube, tmp_path, f"replica-{i}") for i in (1, 2))
    try:
        first.start()
        wait_for("replica-1 leads", lambda: "became the leader" in first.log_path.read_text(), timeout=20)
        second.start()
        wait_for(
            "replica-2 waits",
            lambda: "waiting to become the leader" in second.log_path.read_text(),
            timeout=20,
        )
        assert "became the leader" not in second.log_path.read_text()

        first.stop()  # a clean stop releases the lease: the standby does not wait for expiry
        took = wait_for(
            "replica-2 leads", lambda: "became the leader" in second.log_path.read_text(), timeout=20
        )
        assert took < 10
        namespace = f"leader-{uuid.uuid4().hex[:6]}"
        kube.kubectl("create", "namespace", namespace)
        program = {
            "apiVersion": "bpfleet.io/v1alpha1",
            "kind": "EbpfProgram",
            "metadata": {"name": "reconciled"},
            "spec": {
                "source": {"builtin": "egress-port-deny"},
                "function": "deny_connect4",
                "attach": {"type": "CgroupSockAddr", "hook": "Connect4"},
                "podSelector": {},
                "parameters": {"PORT": 1},
                "nodeSelector": {"matchLabels": {"bpfleet.test/none": "x"}},
            },
        }
        kube.apply(namespace, program)
        # The new leader reconciles: no node matches, so the program is Ready on zero nodes.
        wait_for("the new leader reconciles", lambda: kube.is_ready(namespace, "reconciled"), timeout=20)
        kube.kubectl("delete", "ebpf", "-n", namespace, "reconciled", "--wait=true", "--timeout=20s")
        kube.kubectl("delete", "namespace", namespace, "--wait=false")
    finally:
        first.stop()
        second.stop()
