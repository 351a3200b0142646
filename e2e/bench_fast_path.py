"""The fast path's figure: from kubelet making a pod's cgroup to every program attached to it.

For each program count, K pod-traffic-counter programs select the pods; each pod is made Pending
first (kubelet's order), the agent is asked over its hook socket, without waiting, until it says it
knows the pod (a pass registered it), then the pod and container cgroups are made and the time is
taken until every program's link pin for the pod exists (a pin is made once its link is attached).
"""

from __future__ import annotations

import time
from pathlib import Path

from e2e.harness import wait_for
from e2e.kube import Kube
from e2e.kubelet_order import KubeletOrder
from e2e.podsim import PodSimulator
from node_agent.hook import ask

SELECTOR = {"matchLabels": {"app": "fast"}}
_POLL = 0.0002  # seconds between looks at the pins: fine enough for a 1 ms figure, light on the CPU


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
        samples = []
        for i in range(pods):
            pod = order.create_pending(namespace, f"fast-{count}-{i}", {"app": "fast"})
            _wait_registered(hook_socket, pod.uid)
            links = [directory / pod.uid for directory in pins]
            start = time.monotonic()
            sim._mkdirs(pod.container_cgroup)  # the pod cgroup, then the container's, as kubelet does
            deadline = start + 10
            while not all(link.exists() for link in links):
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{pod.key}: not every program attached 10 s after its cgroup")
                time.sleep(_POLL)
            samples.append(time.monotonic() - start)
            sim.delete_pod(pod)
        figures[count] = samples
    kube.kubectl("delete", "ebpf", "--all", "-n", namespace, "--wait=true", "--timeout=120s")
    return figures
