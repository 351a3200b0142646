"""Kubernetes Events on a program, for the transitions a user cares about."""

from __future__ import annotations

import datetime
import logging
import uuid
from typing import Any

from kubernetes.client import CoreV1Api, CoreV1Event, V1EventSource, V1ObjectMeta, V1ObjectReference
from kubernetes.client.exceptions import ApiException

log = logging.getLogger(__name__)

COMPONENT = "bpfleet-operator"
# Where events about cluster-scoped objects go (kopf posts its own there too).
CLUSTER_EVENTS_NAMESPACE = "default"


def post(core: CoreV1Api, obj: dict[str, Any], kind: str, reason: str, message: str) -> None:
    """Posts a Normal or Warning event about `obj`; a failure to post is logged, never raised."""
    meta = obj["metadata"]
    namespace = meta.get("namespace") or CLUSTER_EVENTS_NAMESPACE
    now = datetime.datetime.now(datetime.UTC)
    event = CoreV1Event(
        # Object names reach 253 characters, event names too: keep room for the suffix.
        metadata=V1ObjectMeta(
            name=f"{meta['name'][:200].rstrip('-.')}.{uuid.uuid4().hex[:12]}", namespace=namespace
        ),
        involved_object=V1ObjectReference(
            api_version=obj.get("apiVersion"),
            kind=obj.get("kind"),
            name=meta["name"],
            namespace=meta.get("namespace"),
            uid=meta.get("uid"),
            resource_version=meta.get("resourceVersion"),
        ),
        type=kind,
        reason=reason,
        message=message[:1024],
        source=V1EventSource(component=COMPONENT),
        first_timestamp=now,
        last_timestamp=now,
        count=1,
    )
    try:
        core.create_namespaced_event(namespace, event)
    except ApiException as e:
        log.warning("could not post event", extra={"reason": reason, "error": str(e.reason)})
