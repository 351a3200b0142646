"""The object calls the agent makes, on the thin client (rest.py), named as the API's operations.
Bodies and answers are plain dicts; failures raise bpfleet_api.errors.ApiError with the status."""

from __future__ import annotations

from typing import Any

from bpfleet_api.rest import RestClient, object_path


class CustomObjects:
    def __init__(self, api: RestClient) -> None:
        self.api = api

    def get_namespaced_custom_object(
        self, group: str, version: str, namespace: str, plural: str, name: str
    ) -> dict[str, Any]:
        return self.api.get(object_path(group, version, plural, name, namespace))

    def create_cluster_custom_object(
        self, group: str, version: str, plural: str, body: dict[str, Any]
    ) -> dict[str, Any]:
        return self.api.create(object_path(group, version, plural), body)

    def patch_cluster_custom_object_status(
        self, group: str, version: str, plural: str, name: str, body: dict[str, Any]
    ) -> dict[str, Any]:
        """A JSON merge patch of the status subresource."""
        return self.api.merge_patch(object_path(group, version, plural, name) + "/status", body)


class CoreObjects:
    def __init__(self, api: RestClient) -> None:
        self.api = api

    def read_node(self, name: str) -> dict[str, Any]:
        return self.api.get(object_path(None, "v1", "nodes", name))
