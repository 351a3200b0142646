"""The Kubernetes API client both components use: in-cluster when in a pod, else a kubeconfig."""

from __future__ import annotations

import os
from typing import Any

from kubernetes import client, config


def request_seconds() -> float:
    """The read timeout of every request that names none (env BPFLEET_API_TIMEOUT_SECONDS, 15):
    without one, a request sent on a pooled connection that died silently (open, nothing arrives)
    waits forever. 15 s, as the HTTP/2 health check of Go clients finds a dead connection in. Watches
    set their own (node_agent/watch.py)."""
    return float(os.environ.get("BPFLEET_API_TIMEOUT_SECONDS", "15"))


CONNECT_SECONDS = 5.0


def api_client(kubeconfig: str | None = None) -> client.ApiClient:
    """An explicit kubeconfig wins; in a pod, the ServiceAccount; otherwise $KUBECONFIG, read now
    (the client library fixed its own default when it was imported)."""
    if kubeconfig:
        config.load_kube_config(config_file=kubeconfig)
    else:
        try:
            config.load_incluster_config()
        except config.ConfigException:
            config.load_kube_config(config_file=os.environ.get("KUBECONFIG"))
    api = client.ApiClient()
    with_default_timeout(api, (CONNECT_SECONDS, request_seconds()))
    return api


def with_default_timeout(api: client.ApiClient, timeout: tuple[float, float]) -> None:
    # The client hands urllib3 "no timeout" when a call names none: fill it in below the client.
    request = api.rest_client.request

    def bounded(*args: Any, _request_timeout: Any = None, **kwargs: Any) -> Any:
        return request(*args, _request_timeout=_request_timeout or timeout, **kwargs)

    api.rest_client.request = bounded
