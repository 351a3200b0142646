"""The operator's watch caches (ClusterCache on the shared informer) through a proxy that freezes
their connections: a Namespace created and a Node relabelled during the stall reach the caches and
their hooks within the stall bound, by a new watch from the last version, not a relist."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlparse

import pytest

from bpfleet_api.informer import WatchTiming
from bpfleet_api.rest import RestClient
from bpfleet_operator.cluster_cache import ClusterCache, Hooks
from e2e.controlplane import ControlPlane
from e2e.freeze_proxy import FreezingProxy
from e2e.harness import wait_for
from e2e.kube import Kube
from tests.apiserver.operator_support import create_namespace

pytestmark = pytest.mark.apiserver

WATCH_SECONDS = 3
STALL_BOUND = WatchTiming(watch_seconds=WATCH_SECONDS).stall_seconds


class Heard:
    def __init__(self) -> None:
        self.namespaces: list[str] = []
        self.fanouts = 0

    def hooks(self) -> Hooks:
        def fanout() -> None:
            self.fanouts += 1

        return Hooks(
            fanout_changed=fanout,
            programs_changed=lambda keys: None,
            namespace_changed=self.namespaces.append,
            node_state_changed=lambda node: None,
            agent_changed=lambda node: None,
        )


@pytest.fixture
def proxied_cache(
    control_plane: ControlPlane, crds: Kube, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[FreezingProxy, ClusterCache, Heard]]:
    monkeypatch.setenv("BPFLEET_WATCH_SECONDS", str(WATCH_SECONDS))
    server = urlparse(control_plane.server_url)
    with FreezingProxy((server.hostname or "127.0.0.1", server.port or 443)) as proxy:
        config = proxy.kubeconfig(control_plane.kubeconfig, tmp_path / "kubeconfig")
        heard = Heard()
        cache = ClusterCache(RestClient.load(str(config)), heard.hooks())
        cache.start()
        try:
            assert cache.wait_synced(20), "the caches never synced"
            yield proxy, cache, heard
        finally:
            cache.stop()
            for informer in cache._informers:
                informer.join(STALL_BOUND + 5)


@pytest.fixture
def names_made(kube: Kube) -> Iterator[list[str]]:
    made: list[str] = []
    yield made
    for name in made:
        kube.kubectl("delete", "namespace", name, "--wait=false", "--ignore-not-found", check=False)


def test_a_stalled_cache_watch_is_noticed_and_resumed_within_the_bound(
    kube: Kube, proxied_cache: tuple[FreezingProxy, ClusterCache, Heard], names_made: list[str]
):
    proxy, cache, heard = proxied_cache
    time.sleep(1)  # the lists' own events are in: every watch is idle
    assert proxy.freeze() >= len(cache._informers)  # one open watch per cache, all frozen
    frozen_at = time.monotonic()
    name = f"opcache-{uuid.uuid4().hex[:8]}"
    names_made.append(create_namespace(kube, name, labels={"bpfleet.test/cache": "yes"}))
    time.sleep(0.5)
    assert cache.namespaces.get(name) is None  # the frozen watch brings nothing: a real stall

    wait_for("the namespace in the cache", lambda: cache.namespaces.get(name) is not None, STALL_BOUND + 3)
    took = time.monotonic() - frozen_at
    info = cache.namespaces.get(name)  # kept reduced, as the cache keeps it
    assert info is not None and info.labels.get("bpfleet.test/cache") == "yes"
    assert name in heard.namespaces
    stats = cache.namespaces.stats
    assert stats.stalls >= 1 and stats.lists == 1  # watched again from its version: no relist
    assert stats.last_stall_at is not None and stats.last_stall_at - frozen_at <= STALL_BOUND + 0.5
    # The other caches' watches were frozen too, and each noticed on its own.
    wait_for("every cache noticed its stall", lambda: all(i.stats.stalls >= 1 for i in cache._informers), 5)
    print(f"operator cache: stall noticed and namespace seen {took:.2f}s after the freeze")
