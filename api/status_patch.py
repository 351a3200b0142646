"""A merge patch of a cluster-scoped bpfleet object's status on the thin client, where a missing
object is an answer (False), not an error."""

from __future__ import annotations

from typing import Any

from bpfleet_api import names
from bpfleet_api.errors import ApiError
from bpfleet_api.objects import CustomObjects


def patch_status(
    custom: CustomObjects, plural: str, name: str, status: dict[str, Any], ignore: tuple[int, ...] = (404,)
) -> bool:
    try:
        custom.patch_cluster_custom_object_status(
            names.GROUP, names.VERSION, plural, name, {"status": status}
        )
    except ApiError as e:
        if e.status in ignore:
            return False
        raise
    return True
