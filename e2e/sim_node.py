"""The Node side of the pod simulator (e2e/podsim.py): its Node object, Ready, and the Lease kubelet
renews, with the heartbeat that keeps both fresh."""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Mapping

import kubernetes.client
from kubernetes.client.exceptions import ApiException

from e2e.sim_cgroups import event
from e2e.sim_objects import (
    JSON_PATCH,
    MERGE_PATCH,
    STRATEGIC_MERGE_PATCH,
    fmt_labels,
    is_status,
    kube_arch,
    node_status,
    replace_labels,
    timestamp,
    timestamp_micro,
)

NODE_LEASE_NAMESPACE = "kube-node-lease"
NODE_LEASE_SECONDS = 40


class NodeLifecycle:
    """What PodSimulator does as its node's kubelet, apart from pods."""

    core: kubernetes.client.CoreV1Api
    coordination: kubernetes.client.CoordinationV1Api
    node_name: str
    _node_ensured: bool
    _heartbeat_stop: threading.Event | None
    _heartbeat_thread: threading.Thread | None

    def _ensure_namespace(self, namespace: str) -> None:
        raise NotImplementedError

    def ensure_node(self, labels: Mapping[str, str] | None = None) -> kubernetes.client.V1Node:
        """Creates the Node (or, given labels, makes its labels exactly the defaults plus these) and
        marks it Ready through the status subresource."""
        desired = {
            "kubernetes.io/hostname": self.node_name,
            "kubernetes.io/os": "linux",
            "kubernetes.io/arch": kube_arch(),
            **(labels or {}),
        }
        body = kubernetes.client.V1Node(
            api_version="v1",
            kind="Node",
            metadata=kubernetes.client.V1ObjectMeta(name=self.node_name, labels=desired),
        )
        try:
            self.core.create_node(body)
            event("node.created", node=self.node_name, labels=fmt_labels(desired))
        except ApiException as exc:
            if not is_status(exc, 409):
                raise
            if labels is not None:
                replace_labels(
                    lambda patch: self.core.patch_node(self.node_name, patch, _content_type=JSON_PATCH),
                    desired,
                )
                event("node.labels_set", node=self.node_name, labels=fmt_labels(desired))
        self._node_ensured = True
        node = self.core.patch_node_status(
            self.node_name, node_status(self.node_name), _content_type=STRATEGIC_MERGE_PATCH
        )
        self._renew_lease(node.metadata.uid)
        event("node.ready", node=self.node_name)
        return node

    def heartbeat(self) -> None:
        """What kubelet does every few seconds: renew the node Lease and the Ready heartbeat time."""
        patch = {
            "status": {"conditions": [{"type": "Ready", "status": "True", "lastHeartbeatTime": timestamp()}]}
        }
        node = self.core.patch_node_status(self.node_name, patch, _content_type=STRATEGIC_MERGE_PATCH)
        self._renew_lease(node.metadata.uid)

    def start_heartbeat(self, interval: float = 10.0) -> None:
        """Heartbeats in a daemon thread until cleanup(); only needed when a node lifecycle
        controller runs, which would otherwise mark the node NotReady after ~40 s."""
        if self._heartbeat_thread is not None:
            return
        stop = threading.Event()

        def loop() -> None:
            while not stop.wait(interval):
                try:
                    self.heartbeat()
                except Exception as exc:  # keep beating through apiserver hiccups
                    event("node.heartbeat_failed", logging.WARNING, node=self.node_name, error=exc)

        self._heartbeat_stop = stop
        self._heartbeat_thread = threading.Thread(
            target=loop, name=f"podsim-heartbeat-{self.node_name}", daemon=True
        )
        self._heartbeat_thread.start()

    def stop_heartbeat(self) -> None:
        if self._heartbeat_stop is not None and self._heartbeat_thread is not None:
            self._heartbeat_stop.set()
            self._heartbeat_thread.join(timeout=30)
        self._heartbeat_stop = self._heartbeat_thread = None

    def delete_node(self) -> None:
        """Deletes the Node and its Lease (absent ones are fine)."""
        self.stop_heartbeat()
        self._delete_node(request_timeout=None)

    def _delete_node(self, request_timeout: float | None) -> None:
        with contextlib.suppress(ApiException):
            self.coordination.delete_namespaced_lease(
                self.node_name, NODE_LEASE_NAMESPACE, _request_timeout=request_timeout
            )
        try:
            self.core.delete_node(self.node_name, _request_timeout=request_timeout)
            event("node.deleted", node=self.node_name)
        except ApiException as exc:
            if not is_status(exc, 404):
                raise
        self._node_ensured = False

    def _renew_lease(self, node_uid: str) -> None:
        spec = {
            "holderIdentity": self.node_name,
            "leaseDurationSeconds": NODE_LEASE_SECONDS,
            "renewTime": timestamp_micro(),
        }
        try:
            self.coordination.patch_namespaced_lease(
                self.node_name, NODE_LEASE_NAMESPACE, {"spec": spec}, _content_type=MERGE_PATCH
            )
            return
        except ApiException as exc:
            if not is_status(exc, 404):
                raise
        self._ensure_namespace(NODE_LEASE_NAMESPACE)
        # Owned by the Node, as kubelet does it, so the garbage collector removes it with the node.
        owner = kubernetes.client.V1OwnerReference(
            api_version="v1", kind="Node", name=self.node_name, uid=node_uid
        )
        lease = kubernetes.client.V1Lease(
            api_version="coordination.k8s.io/v1",
            kind="Lease",
            metadata=kubernetes.client.V1ObjectMeta(
                name=self.node_name, namespace=NODE_LEASE_NAMESPACE, owner_references=[owner]
            ),
            spec=kubernetes.client.V1LeaseSpec(
                holder_identity=self.node_name, lease_duration_seconds=NODE_LEASE_SECONDS
            ),
        )
        with contextlib.suppress(ApiException):  # lost a race with a concurrent heartbeat: fine
            self.coordination.create_namespaced_lease(NODE_LEASE_NAMESPACE, lease)
        self.coordination.patch_namespaced_lease(
            self.node_name, NODE_LEASE_NAMESPACE, {"spec": spec}, _content_type=MERGE_PATCH
        )
