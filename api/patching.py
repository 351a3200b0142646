"""JSON merge patches of bpfleet objects, spelled out once.

The kubernetes client guesses a patch content type from the body; saying it keeps the meaning of a
patch (merge vs JSON patch) from depending on the client version.
"""

from __future__ import annotations

from typing import Any

from kubernetes.client import CustomObjectsApi
from kubernetes.client.exceptions import ApiException

from bpfleet_api import names

MERGE_PATCH = "application/merge-patch+json"


def merge_patch(
    custom: CustomObjectsApi,
    plural: str,
    namespace: str | None,
    name: str,
    body: dict[str, Any],
    *,
    status: bool = False,
    ignore: tuple[int, ...] = (404,),
) -> bool:
    """Applies the patch (to a cluster-scoped object when `namespace` is None); returns False when
    the API answered with one of the `ignore` codes."""
    try:
        if namespace is None:
            patch = (
                custom.patch_cluster_custom_object_status if status else custom.patch_cluster_custom_object
            )
            patch(names.GROUP, names.VERSION, plural, name, body, _content_type=MERGE_PATCH)
        else:
            patch = (
                custom.patch_namespaced_custom_object_status
                if status
                else custom.patch_namespaced_custom_object
            )
            patch(names.GROUP, names.VERSION, namespace, plural, name, body, _content_type=MERGE_PATCH)
    except ApiException as e:
        if e.status in ignore:
            return False
        raise
    return True


def merged(target: Any, patch: Any) -> Any:
    """What a JSON merge patch (RFC 7386) makes of `target`: maps merge, null removes, all else
    replaces; neither argument is changed."""
    if not isinstance(patch, dict):
        return patch
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merged(result.get(key), value)
    return result
