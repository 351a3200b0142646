"""A pod simulator that stands in for kubelet and the container runtime on this host.

There is no kubelet here, yet the agent needs pods that are real to both sides it looks at: Pod and
Node objects in the API (bound to a node, Running, with a QoS class and container ids) and, in the
kernel, the cgroup v2 directories kubelet would create with a live process inside. PodSimulator
makes both. Processes are moved into their container cgroup in the child before exec, so nothing
they do is ever attributed to another cgroup.

Its parts: the cgroups (e2e/sim_cgroups.py: kubelet's layouts, making and removing them), the pods
(e2e/sim_pod.py), the API objects (e2e/sim_objects.py) and the command line (e2e/podsim_cli.py).

CLI (the process outlives the command; remove it later with cleanup-tree):
    python -m e2e.podsim --node N --cgroup-root PATH [--driver systemd|cgroupfs] [--kubeconfig F] \
        create-pod --namespace NS --name P --label k=v ...
    python -m e2e.podsim --node N --cgroup-root PATH ensure-node --label k=v ...
    python -m e2e.podsim --node N --cgroup-root PATH cleanup-tree
"""

from __future__ import annotations

import contextlib
import logging
import subprocess
import sys
import threading
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType

import kubernetes.client
from kubernetes.client.exceptions import ApiException

from e2e import podnet
from e2e.sim_cgroups import (
    CgroupDriver,
    QosClass,
    cgroup_pids,
    cgroup_populated,
    cleanup_cgroup_tree,
    container_cgroup_name,
    container_cgroup_relpath,
    event,
    find_cgroup2_mount,
    is_cgroup2_dir,
    kill_cgroup,
    new_container_id,
    normalize_qos,
    pod_cgroup_relpath,
    process_cgroup,
    rmdir_cgroup,
    run_in_cgroup,
    spawn_in_cgroup,
    wait_unpopulated,
)
from e2e.sim_node import NODE_LEASE_NAMESPACE, NodeLifecycle
from e2e.sim_objects import (
    JSON_PATCH,
    STRATEGIC_MERGE_PATCH,
    fmt_labels,
    is_status,
    pod_manifest,
    pod_status,
    replace_labels,
)
from e2e.sim_pod import PROBE_SYMBOL, PROBE_TARGET, SimPod, UdpResult, build_probe_root, wait_chrooted

# What the rest of the suites import from here: the simulator and the parts it is made of.
__all__ = [
    "PROBE_SYMBOL",
    "PROBE_TARGET",
    "STRATEGIC_MERGE_PATCH",
    "CgroupDriver",
    "PodSimulator",
    "QosClass",
    "SimPod",
    "UdpResult",
    "build_probe_root",
    "cgroup_pids",
    "cgroup_populated",
    "cleanup_cgroup_tree",
    "container_cgroup_name",
    "container_cgroup_relpath",
    "find_cgroup2_mount",
    "is_cgroup2_dir",
    "new_container_id",
    "normalize_qos",
    "pod_cgroup_relpath",
    "process_cgroup",
    "run_in_cgroup",
    "spawn_in_cgroup",
]

# Short: cleanup must not hang on an apiserver that is already gone.
CLEANUP_REQUEST_TIMEOUT = 5.0


# --- the simulator -------------------------------------------------------------------------------------


class PodSimulator(NodeLifecycle):
    """Plays kubelet for one node: Node and Pod objects in the API, cgroups and processes in the kernel.

    Everything it creates is tracked so that cleanup() can remove it, also after failures.
    """

    def __init__(
        self,
        api: kubernetes.client.ApiClient,
        node_name: str,
        cgroup_root: Path,
        driver: CgroupDriver = "systemd",
    ) -> None:
        if driver not in ("systemd", "cgroupfs"):
            raise ValueError(f"unknown cgroup driver {driver!r}; expected systemd or cgroupfs")
        self.api = api
        self.node_name = node_name
        self.cgroup_root = Path(cgroup_root)
        self.driver: CgroupDriver = driver
        self.core = kubernetes.client.CoreV1Api(api)
        self.coordination = kubernetes.client.CoordinationV1Api(api)
        self._lock = threading.Lock()
        self._pods: dict[str, SimPod] = {}
        self._created_dirs: list[Path] = []  # in creation order: parents before children
        self._node_ensured = False
        self._heartbeat_stop: threading.Event | None = None
        self._heartbeat_thread: threading.Thread | None = None
        existing = next(p for p in (self.cgroup_root, *self.cgroup_root.parents) if p.exists())
        if not is_cgroup2_dir(existing):
            raise ValueError(f"{self.cgroup_root} is not inside a cgroup v2 hierarchy")
        self._mkdirs(self.cgroup_root)

    # -- context manager

    def __enter__(self) -> PodSimulator:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.cleanup()

    @property
    def pods(self) -> list[SimPod]:
        with self._lock:
            return list(self._pods.values())

    # -- pods

    def create_pod(
        self,
        namespace: str,
        name: str,
        labels: Mapping[str, str] | None = None,
        qos: str = "BestEffort",
        network: bool = False,
        root: Path | None = None,
    ) -> SimPod:
        """Creates a Running pod on this node: the API object, its cgroups, and a live process.

        With a root (see build_probe_root), the process runs `/bin/target sleep` chrooted into it,
        so the pod's /proc/<pid>/root is that directory, as a container's is its image."""
        pod = self.pending_pod(namespace, name, labels, qos, root)
        uid, qos_class, container_id, labels = pod.uid, pod.qos, pod.container_id, pod.labels
        try:
            if network:
                pod.network = podnet.create(uid)
            self._start_container(pod)
            self.core.patch_namespaced_pod_status(
                name, namespace, pod_status(qos_class, container_id), _content_type=STRATEGIC_MERGE_PATCH
            )
        except BaseException:
            event("pod.create_failed", logging.WARNING, pod=pod.key, uid=uid)
            with contextlib.suppress(Exception):  # keep the original error, not the rollback's
                self._remove_pod(pod, request_timeout=CLEANUP_REQUEST_TIMEOUT)
            raise
        event(
            "pod.created",
            pod=pod.key,
            uid=uid,
            qos=qos_class,
            pid=pod.pid,
            cgroup=pod.pod_cgroup,
            labels=fmt_labels(labels),
        )
        return pod

    def pending_pod(
        self,
        namespace: str,
        name: str,
        labels: Mapping[str, str] | None = None,
        qos: str = "BestEffort",
        root: Path | None = None,
    ) -> SimPod:
        """The Pod object, Pending, and nothing on the node yet; from now on cleanup() removes it."""
        qos_class = normalize_qos(qos)
        labels = dict(labels or {})
        self._ensure_namespace(namespace)
        created = self.core.create_namespaced_pod(
            namespace, pod_manifest(namespace, name, labels, self.node_name, qos_class)
        )
        uid, container_id = created.metadata.uid, new_container_id()
        pod_cgroup = self.cgroup_root / pod_cgroup_relpath(uid, qos_class, self.driver)
        pod = SimPod(
            name=name,
            namespace=namespace,
            uid=uid,
            qos=qos_class,
            container_id=container_id,
            pod_cgroup=pod_cgroup,
            container_cgroup=pod_cgroup / container_cgroup_name(container_id, self.driver),
            pid=0,
            labels=labels,
            root=root,
        )
        with self._lock:
            self._pods[pod.key] = pod
        return pod

    def _start_container(self, pod: SimPod) -> None:
        self._mkdirs(pod.container_cgroup)
        # Own session: a Ctrl-C aimed at the test run must not kill "containers" behind cleanup's back.
        argv = ["sleep", "infinity"]
        if pod.root is not None:
            argv = ["chroot", str(pod.root), PROBE_TARGET, "sleep"]
        if pod.network is not None:
            argv = pod.network.exec_argv(argv)
        proc = spawn_in_cgroup(
            argv,
            pod.container_cgroup,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        pod._proc, pod.pid = proc, proc.pid
        if pod.root is not None:
            wait_chrooted(proc.pid, pod.root)
        expected = "/" + str(pod.container_cgroup.relative_to(find_cgroup2_mount()))
        actual = process_cgroup(proc.pid)
        if actual != expected:
            raise RuntimeError(f"pid {proc.pid} landed in cgroup {actual}, expected {expected}")

    def set_labels(self, pod: SimPod, labels: Mapping[str, str]) -> None:
        """Makes the pod's labels exactly `labels` (keys not given are removed)."""
        replace_labels(
            lambda patch: self.core.patch_namespaced_pod(
                pod.name, pod.namespace, patch, _content_type=JSON_PATCH
            ),
            labels,
        )
        pod.labels = dict(labels)
        event("pod.labels_set", pod=pod.key, labels=fmt_labels(labels))

    def delete_pod(self, pod: SimPod) -> None:
        """Deletes the Pod object at once (grace period 0), kills its processes, removes its cgroups."""
        self._remove_pod(pod, request_timeout=None)
        event("pod.deleted", pod=pod.key, uid=pod.uid)

    def _remove_pod(self, pod: SimPod, request_timeout: float | None) -> None:
        try:
            self._delete_pod_object(pod, request_timeout)
        finally:
            self._stop_container(pod)
            with self._lock:
                self._pods.pop(pod.key, None)

    def _delete_pod_object(self, pod: SimPod, request_timeout: float | None) -> None:
        try:
            self.core.delete_namespaced_pod(
                pod.name, pod.namespace, grace_period_seconds=0, _request_timeout=request_timeout
            )
        except ApiException as exc:
            if not is_status(exc, 404):
                raise

    def _stop_container(self, pod: SimPod) -> None:
        # Kill the whole pod cgroup: also catches leftovers of SimPod.run() that timed out.
        kill_cgroup(pod.pod_cgroup)
        if pod.network is not None:
            podnet.delete(pod.network)
        if pod._proc is not None:
            with contextlib.suppress(ProcessLookupError):
                pod._proc.kill()
            pod._proc.wait(timeout=10)  # reap, or the zombie lingers until we exit
        wait_unpopulated(pod.pod_cgroup, timeout=5)
        for cgroup in (pod.container_cgroup, pod.pod_cgroup):
            if rmdir_cgroup(cgroup):
                self._forget_dir(cgroup)

    # -- cleanup

    def cleanup(self) -> None:
        """Removes everything this simulator created: processes, cgroups (root and parents it made),
        Pod objects and the Node. Never raises for a dead apiserver; safe to call repeatedly."""
        self.stop_heartbeat()
        api_alive = True
        for pod in self.pods:
            if api_alive:
                try:
                    self._delete_pod_object(pod, CLEANUP_REQUEST_TIMEOUT)
                except Exception as exc:  # apiserver gone: still clean the kernel side
                    api_alive = False
                    event("cleanup.api_unreachable", logging.WARNING, pod=pod.key, error=type(exc).__name__)
            self._stop_container(pod)
            with self._lock:
                self._pods.pop(pod.key, None)
        if api_alive and self._node_ensured:
            try:
                self._delete_node(CLEANUP_REQUEST_TIMEOUT)
            except Exception as exc:
                event(
                    "cleanup.node_delete_failed",
                    logging.WARNING,
                    node=self.node_name,
                    error=type(exc).__name__,
                )
        self._remove_created_dirs()

    def _remove_created_dirs(self) -> None:
        with self._lock:
            created = list(self._created_dirs)
        if self.cgroup_root in created and self.cgroup_root.exists():
            # The whole root is ours: also sweep anything others put there (stray processes, cgroups).
            cleanup_cgroup_tree(self.cgroup_root)
        for path in reversed(created):
            if rmdir_cgroup(path, timeout=1.0):
                self._forget_dir(path)
        event("cleanup.done", node=self.node_name, cgroup_root=self.cgroup_root)

    def _mkdirs(self, path: Path) -> None:
        """mkdir -p that remembers which directories it actually created."""
        missing = [p for p in (path, *path.parents) if not p.exists()]
        for directory in reversed(missing):
            try:
                directory.mkdir()
            except FileExistsError:
                continue
            with self._lock:
                self._created_dirs.append(directory)

    def _forget_dir(self, path: Path) -> None:
        with self._lock, contextlib.suppress(ValueError):
            self._created_dirs.remove(path)

    def _ensure_namespace(self, namespace: str) -> None:
        body = kubernetes.client.V1Namespace(
            api_version="v1", kind="Namespace", metadata=kubernetes.client.V1ObjectMeta(name=namespace)
        )
        try:
            self.core.create_namespace(body)
            event("namespace.created", namespace=namespace)
        except ApiException as exc:
            if not is_status(exc, 409):
                raise
        if namespace != NODE_LEASE_NAMESPACE:
            self._ensure_default_service_account(namespace)

    def _ensure_default_service_account(self, namespace: str) -> None:
        # ServiceAccount admission rejects pods until "default" exists; the controller manager
        # creates it asynchronously, so creating it here removes a race (409 when it won).
        body = kubernetes.client.V1ServiceAccount(
            api_version="v1",
            kind="ServiceAccount",
            metadata=kubernetes.client.V1ObjectMeta(name="default", namespace=namespace),
        )
        try:
            self.core.create_namespaced_service_account(namespace, body)
        except ApiException as exc:
            if not is_status(exc, 409):
                raise


if __name__ == "__main__":
    from e2e.podsim_cli import main

    sys.exit(main())
