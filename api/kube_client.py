"""The `kubernetes` package's client, for the operator's kopf parts (the agent uses rest.py): in-cluster
when in a pod, else a kubeconfig."""

from __future__ import annotations

import os
from typing import Any

from kubernetes import client, config

from bpfleet_api.kube_timeouts import CONNECT_SECONDS, request_seconds

POOL_CONNECTIONS = 32


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
    configuration = client.Configuration.get_default_copy()
    # The operator writes node states from many threads at once; the library's pool is 5 per core.
    configuration.connection_pool_maxsize = max(configuration.connection_pool_maxsize, POOL_CONNECTIONS)
    api = client.ApiClient(configuration)
    with_default_timeout(api, (CONNECT_SECONDS, request_seconds()))
    return api


def with_default_timeout(api: client.ApiClient, timeout: tuple[float, float]) -> None:
    # The client hands urllib3 "no timeout" when a call names none: fill it in below the client.
    request = api.rest_client.request

    def bounded(*args: Any, _request_timeout: Any = None, **kwargs: Any) -> Any:
        return request(*args, _request_timeout=_request_timeout or timeout, **kwargs)

    api.rest_client.request = bounded
