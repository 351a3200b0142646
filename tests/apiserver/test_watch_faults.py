"""The agent's informer against a real API server whose watches break: expired versions (a real
410 from the server), a stalled connection (a proxy that freezes it), a healthy idle watch (not a
stall), and an API server that refuses connections (retries back off)."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlparse

import pytest

from bpfleet_api import names
from bpfleet_api.informer import Informer, WatchTiming
from bpfleet_api.rest import RestClient
from e2e.controlplane import ControlPlane
from e2e.freeze_proxy import FreezingProxy
from e2e.harness import wait_for
from e2e.kube import Kube, scratch_namespace

# Short watches, so that the bound is seconds: stall noticed within 3 + 2 s of the last byte.
TIMING = WatchTiming(watch_seconds=3, grace=2.0, retry_base=0.2, retry_cap=1.0)


@pytest.fixture
def proxy(control_plane: ControlPlane) -> Iterator[FreezingProxy]:
    server = urlparse(control_plane.server_url)
    with FreezingProxy((server.hostname or "127.0.0.1", server.port or 443)) as proxy:
        yield proxy


@pytest.fixture
def proxied_api(proxy: FreezingProxy, control_plane: ControlPlane, tmp_path: Path) -> RestClient:
    config = proxy.kubeconfig(control_plane.kubeconfig, tmp_path / "kubeconfig")
    return RestClient.load(str(config))


@pytest.fixture
def namespace(crds: Kube) -> Iterator[str]:
    with scratch_namespace(crds, "watch") as name:
        yield name


@pytest.fixture
def started() -> Iterator[list[Informer]]:
    informers: list[Informer] = []
    try:
        yield informers
    finally:
        for informer in informers:
            informer.stop()
        for informer in informers:
            informer.join(timeout=TIMING.stall_seconds + 5)


def _configmaps(api: RestClient, namespace: str, started: list[Informer]) -> Informer:
    informer = Informer(api, f"/api/v1/namespaces/{namespace}/configmaps", timing=TIMING)
    started.append(informer)
    informer.start()
    wait_for("the informer synced", informer.synced.is_set, timeout=10)
    return informer


def _names(informer: Informer) -> set[str]:
    return {o["metadata"]["name"] for o in informer.objects()}


def _create_configmap(kube: Kube, namespace: str, name: str) -> None:
    kube.core.create_namespaced_config_map(namespace, {"metadata": {"name": name}, "data": {"k": "v"}})


def test_a_stalled_watch_is_noticed_within_its_bound_and_converges(
    kube: Kube, proxy: FreezingProxy, proxied_api, namespace: str, started: list[Informer]
):
    informer = _configmaps(proxied_api, namespace, started)
    _create_configmap(kube, namespace, "before")
    wait_for("an object created before the stall seen", lambda: "before" in _names(informer), timeout=5)

    assert proxy.freeze() >= 1
    frozen_at = time.monotonic()
    _create_configmap(kube, namespace, "during")
    time.sleep(0.5)
    assert "during" not in _names(informer)  # the frozen watch brings nothing: a real stall

    wait_for(
        "an object created during the stall seen",
        lambda: "during" in _names(informer),
        timeout=TIMING.stall_seconds + 3,
    )
    seen = time.monotonic() - frozen_at
    assert informer.stats.stalls == 1
    assert informer.stats.last_stall_at is not None
    assert informer.stats.last_stall_at - frozen_at <= TIMING.stall_seconds + 0.5
    assert informer.stats.lists == 1  # resumed from its version: no relist was needed
    print(f"stall noticed and converged in {seen:.2f}s (bound {TIMING.stall_seconds:.0f}s)")


def test_a_healthy_idle_watch_is_not_taken_for_a_stall(
    kube: Kube, proxied_api, namespace: str, started: list[Informer]
):
    informer = _configmaps(proxied_api, namespace, started)
    time.sleep(3 * TIMING.watch_seconds)  # nothing happens: the server ends each watch, with a bookmark
    assert informer.stats.stalls == 0
    assert informer.stats.failures == 0
    assert informer.stats.watches >= 3
    assert informer.stats.lists == 1  # each new watch resumed from the last version
    _create_configmap(kube, namespace, "after-idle")
    wait_for("an object created after the idle time seen", lambda: "after-idle" in _names(informer))
    kube.core.delete_namespaced_config_map("after-idle", namespace)
    wait_for("its deletion seen", lambda: "after-idle" not in _names(informer))


def test_an_expired_resource_version_is_relisted(crds: Kube, started: list[Informer]):
    """Version 1 is older than anything the server keeps for a custom resource: a real 410."""
    api = crds.rest
    node = f"watch-{uuid.uuid4().hex[:6]}"
    body = {
        "apiVersion": names.API_VERSION,
        "kind": names.NODE_STATE_KIND,
        "metadata": {"name": node},
    }
    crds.custom.create_cluster_custom_object(names.GROUP, names.VERSION, names.NODE_STATE_PLURAL, body)
    try:
        informer = Informer(
            api,
            f"/apis/{names.GROUP}/{names.VERSION}/{names.NODE_STATE_PLURAL}",
            field_selector=f"metadata.name={node}",
            timing=TIMING,
            since="1",
        )
        started.append(informer)
        informer.start()
        wait_for("the informer relisted", informer.synced.is_set, timeout=10)
        assert informer.stats.expired == 1
        assert informer.stats.lists == 1
        assert _names(informer) == {node}
        # And it watches on from the list's version: a deletion arrives as an event.
        crds.custom.delete_cluster_custom_object(names.GROUP, names.VERSION, names.NODE_STATE_PLURAL, node)
        wait_for("the deletion seen", lambda: not _names(informer))
        assert informer.stats.expired == 1 and informer.stats.lists == 1
    finally:
        crds.kubectl("delete", f"{names.NODE_STATE_PLURAL}.{names.GROUP}", node, "--ignore-not-found")


def test_an_api_server_refusing_connections_is_retried_with_backoff_then_converges(
    kube: Kube, proxy: FreezingProxy, proxied_api, namespace: str, started: list[Informer]
):
    informer = _configmaps(proxied_api, namespace, started)
    proxy.refuse = True
    proxy.freeze()  # the open watch dies too, and everything after it is refused
    _create_configmap(kube, namespace, "while-away")
    accepted = proxy.accepted
    time.sleep(TIMING.stall_seconds + 4)
    attempts = proxy.accepted - accepted
    # Without a backoff a refusing server sees thousands of attempts in that time; with full jitter
    # below 1 s (mean 0.5 s), about a dozen.
    assert 1 <= attempts <= 40, attempts
    assert informer.stats.failures >= 1
    proxy.refuse = False
    wait_for(
        "an object created while away seen",
        lambda: "while-away" in _names(informer),
        timeout=TIMING.retry_cap + 5,
    )
