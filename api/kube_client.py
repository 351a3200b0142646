"""The Kubernetes API client both components use: in-cluster when in a pod, else a kubeconfig."""

from __future__ import annotations

import os

from kubernetes import client, config


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
    return client.ApiClient()
