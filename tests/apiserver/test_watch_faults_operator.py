"""The operator's kopf watches through a proxy that freezes them: a program created while every
connection the operator had is frozen is reconciled within the stall bound, by watches alone (its
resync is ten minutes away)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlparse

import pytest

from e2e.controlplane import ControlPlane
from e2e.freeze_proxy import FreezingProxy
from e2e.harness import ManagedProcess, install_crds, operator_process, wait_for
from e2e.kube import Kube
from tests.apiserver.operator_support import apply_program, namespace_for_a_test, reconciled, skb_program

pytestmark = pytest.mark.apiserver

WATCH_SECONDS = 3
STALL_BOUND = WATCH_SECONDS + 5  # watch_settings.GRACE
# A request the operator sends on a connection frozen with the watches fails after this; then it
# is sent again on a new one.
REQUEST_SECONDS = 3


@pytest.fixture
def proxied_operator(
    kube: Kube, control_plane: ControlPlane, tmp_path: Path
) -> Iterator[tuple[FreezingProxy, ManagedProcess]]:
    install_crds(kube.kubeconfig)
    server = urlparse(control_plane.server_url)
    with FreezingProxy((server.hostname or "127.0.0.1", server.port or 443)) as proxy:
        config = proxy.kubeconfig(control_plane.kubeconfig, tmp_path / "kubeconfig")
        process = operator_process(config, tmp_path / "logs")
        process.env.update(
            {
                "BPFLEET_WATCH_SECONDS": str(WATCH_SECONDS),
                "BPFLEET_API_TIMEOUT_SECONDS": str(REQUEST_SECONDS),
                "BPFLEET_RESYNC_SECONDS": "600",
            }
        )
        process.start()
        try:
            yield proxy, process
        finally:
            process.stop()


@pytest.fixture
def namespace(kube: Kube) -> Iterator[str]:
    with namespace_for_a_test(kube, "opwatch", play_agents=False) as name:
        yield name


def _apply(kube: Kube, namespace: str, name: str) -> None:
    apply_program(kube, skb_program(namespace, name, {"bpfleet.test/none": "none"}))


def test_a_program_created_during_a_watch_stall_is_reconciled_within_the_bound(
    kube: Kube, proxied_operator: tuple[FreezingProxy, ManagedProcess], namespace: str
):
    proxy, operator = proxied_operator
    _apply(kube, namespace, "before")
    wait_for(
        "a program reconciled before the stall", lambda: reconciled(kube.program(namespace, "before")), 30
    )
    time.sleep(1)  # its status write's own events handled: the watches are idle

    frozen = proxy.freeze()
    assert frozen >= 1
    frozen_at = time.monotonic()
    _apply(kube, namespace, "during")
    time.sleep(1)
    assert not reconciled(kube.program(namespace, "during")), "the freeze did not stall the operator"
    wait_for(
        "a program created during the stall reconciled",
        lambda: reconciled(kube.program(namespace, "during")),
        timeout=STALL_BOUND + REQUEST_SECONDS + 10,
        interval=0.2,
    )
    took = time.monotonic() - frozen_at
    assert operator.alive
    print(f"operator: stalled watch noticed and program reconciled {took:.1f}s after the freeze")
    # Noticed, watched again, then the reconcile's reads: the first may wait out one request timeout.
    assert took <= STALL_BOUND + REQUEST_SECONDS + 3, took
