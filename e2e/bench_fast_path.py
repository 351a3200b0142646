"""The fast path's figure: from kubelet making a pod's cgroup to every program attached to it.

For each program count, K pod-traffic-counter programs select the pods; each pod is made Pending
first (kubelet's order), the agent is asked over its hook socket, without waiting, until it says it
knows the pod (a pass registered it), then the pod and container cgroups are made and the time is
taken until every program's link pin for the pod exists (a pin is made once its link is attached).

The pins are waited for with inotify on the programs' links directories, not by polling them: on
two cores, a poll of 50 paths every fraction of a millisecond takes CPU from the agent it measures.
"""

from __future__ import annotations

import select
import time
from pathlib import Path

from e2e.harness import wait_for
from e2e.kube import Kube
from e2e.kubelet_order import KubeletOrder
from e2e.podsim import PodSimulator
from node_agent.cgroup_watch import IN_CREATE, Inotify
from node_agent.hook import ask

SELECTOR = {"matchLabels": {"app": "fast"}}


def _counter(name: str) -> dict:
    spec = {
        "source": {"builtin": "pod-traffic-counter"},
        "function": "count_packets",
        "attach": {"type": "CgroupSkb", "direction": "Egress"},
        "podSelector": SELECTOR,
    }
    return {
        "apiVersion": "bpfleet.io/v1alpha1",
        "kind": "EbpfProgram",
        "metadata": {"name": name},
        "spec": spec,
    }


def _wait_registered(hook_socket: Path, uid: str, timeout: float = 30.0) -> None:
    wait_for("the agent to know the pod", lambda: ask(hook_socket, uid, "", 0.0).get("known"), timeout, 0.005)


def measure(
    kube: Kube, sim: PodSimulator, node: str, hook_socket: Path, counts: list[int], pods: int
) -> dict[int, list[float]]:
    """Seconds from the pod cgroup's mkdir to the last program's link, per program count."""
    namespace = "bench-fast"
    kube.kubectl("create", "namespace", namespace)
    order = KubeletOrder(sim)
    names: list[str] = []
    figures: dict[int, list[float]] = {}
    for count in sorted(counts):
        while len(names) < count:
            names.append(f"fast-{len(names)}")
            kube.apply(namespace, _counter(names[-1]))
        wait_for(
            f"{count} programs Ready", lambda: all(kube.is_ready(namespace, n) for n in names), 60 + 6 * count
        )
        pins = [Path(kube.node_program(namespace, n, node)["status"]["pinPath"]) / "links" for n in names]
        # One pod not counted first: a program's links directory is made at its first attach.
        warm = order.create_pending(namespace, f"fast-{count}-warm", {"app": "fast"})
        _wait_registered(hook_socket, warm.uid)
        sim._mkdirs(warm.container_cgroup)
        links = [d / warm.uid for d in pins]
        wait_for("the first pod attached", lambda: all(p.exists() for p in links), 30, 0.01)  # noqa: B023
        sim.delete_pod(warm)
        samples = []
        with _PinWatch(pins) as watch:
            for i in range(pods):
                pod = order.create_pending(namespace, f"fast-{count}-{i}", {"app": "fast"})
                _wait_registered(hook_socket, pod.uid)
                watch.expect(pod.uid)
                start = time.monotonic()
                sim._mkdirs(pod.container_cgroup)  # the pod cgroup, then the container's, as kubelet does
                samples.append(watch.wait(start + 10, pod.key) - start)
                sim.delete_pod(pod)
        figures[count] = samples
    kube.kubectl("delete", "ebpf", "--all", "-n", namespace, "--wait=true", "--timeout=120s")
    return figures


class _PinWatch:
    """Tells when a pod's link pin exists in every one of `directories` (one per program)."""

    def __init__(self, directories: list[Path]) -> None:
        self.directories = directories
        self._inotify = Inotify()
        self._wds = {self._inotify.add(d, IN_CREATE): d for d in directories}
        self._name = ""
        self._missing: set[Path] = set()

    def __enter__(self) -> _PinWatch:
        return self

    def __exit__(self, *_: object) -> None:
        self._inotify.close()

    def expect(self, name: str) -> None:
        """The next wait is for pins called `name`; events of earlier pods are dropped."""
        self._inotify.read()
        self._name = name
        self._missing = {d for d in self.directories if not (d / name).exists()}

    def wait(self, deadline: float, what: str) -> float:
        """The monotonic time at which the last pin appeared."""
        last = time.monotonic()
        while self._missing:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self._inotify.fd], [], [], left)[0]:
                raise TimeoutError(f"{what}: {len(self._missing)} programs not attached by the deadline")
            last = time.monotonic()
            for wd, _mask, name in self._inotify.read():
                if name == self._name and wd in self._wds:
                    self._missing.discard(self._wds[wd])
        return last
