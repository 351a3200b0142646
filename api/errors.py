"""Typed errors of the API client (rest.py, kubeconfig.py)."""

from __future__ import annotations


class ApiClientError(Exception):
    """Anything the thin API client raises."""


class ConfigError(ApiClientError):
    """No usable kubeconfig or in-cluster configuration."""


class ApiError(ApiClientError):
    """The API server answered with an HTTP error; `status` is its code, `reason` its message."""

    def __init__(self, status: int, reason: str, body: str = "") -> None:
        super().__init__(f"{status} {reason}")
        self.status, self.reason, self.body = status, reason, body


class Expired(ApiError):
    """410 Gone: the resourceVersion asked for is no longer kept by the server."""

    def __init__(self, reason: str) -> None:
        super().__init__(410, reason)
