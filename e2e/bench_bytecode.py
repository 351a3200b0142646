"""apply -> Ready for bytecode against BCC, on one node: the same per-pod packet counter
(pod-traffic-counter, CgroupSkb egress) as

  configmap   its CO-RE object (build/bytecode, `make bytecode`) in a ConfigMap's binaryData
  image       the same object in a bpfman-format image on a loopback registry (e2e/registry.py),
              pullPolicy Always: every sample asks the registry for the manifest (the blob then
              comes from the agent's digest cache, as on a node that has pulled it once)
  inline C    its C source inline, compiled by BCC on the node

Each sample is a new EbpfProgram created through the API (not kubectl, whose own start-up is
~150 ms); the time runs from the create call to Ready=True as a watch delivers it. The kinds take
turns, so a noisy neighbour weighs on all alike, and samples are ~1.2 s apart: the operator writes
a node's spec at once only for the first change after a quiet second (QUIET_SECONDS in
operator/bpfleet_operator/handlers.py); a faster train would measure that batching instead.

Each sample's program is deleted, and gone, before the next: the figure is a new program on the
node as it was, whatever the sample count. A node's state is written whole, so each write costs
the API server more with each program the node runs; the last figure, ConfigMap bytecode on a node
already running BESIDE programs, shows how much.
"""

from __future__ import annotations

import base64
import statistics
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import kubernetes

from bpfleet_api import names
from e2e.bytecode_images import ImageBuilder, bpfman_labels
from e2e.kube import Kube, current_condition
from e2e.registry import LocalRegistry
from e2e.tools import REPO_ROOT

FUNCTION = "count_packets"
OBJECT = REPO_ROOT / "build" / "bytecode" / "pod-traffic-counter.bpf.o"
C_SOURCE = REPO_ROOT / "bpf" / "programs" / "pod-traffic-counter.c"
CONFIG_MAP, KEY = "counter-elf", "prog.bpf.o"
REPOSITORY = "bpfleet/pod-traffic-counter"
KINDS = ("configmap", "image", "inline C")
PAUSE = 1.2  # seconds between samples: more than the operator's quiet second
BESIDE = 50  # programs already on the node for the last figure


def agent_env(registry: LocalRegistry, cache_dir: Path) -> dict[str, str]:
    """What the agent needs to pull the bench's image for a namespaced program."""
    return {"BPFLEET_BYTECODE_REGISTRIES": registry.host, "BPFLEET_BYTECODE_CACHE_DIR": str(cache_dir)}


class ReadyWatch:
    """One watch on a namespace's EbpfPrograms for the whole run: the monotonic time at which
    each program's Ready=True (of its current generation) first arrived."""

    def __init__(self, kube: Kube, namespace: str) -> None:
        self.kube, self.namespace = kube, namespace
        self.ready: dict[str, float] = {}
        self.gone: set[str] = set()
        self._changed = threading.Condition()
        self._watch = kubernetes.watch.Watch()
        self._thread = threading.Thread(target=self._run, name="ready-watch", daemon=True)
        self._failure: BaseException | None = None

    def _run(self) -> None:
        try:
            listed = self.kube.custom.list_namespaced_custom_object(
                names.GROUP, names.VERSION, self.namespace, names.PROGRAM_PLURAL
            )
            for event in self._watch.stream(
                self.kube.custom.list_namespaced_custom_object,
                names.GROUP,
                names.VERSION,
                self.namespace,
                names.PROGRAM_PLURAL,
                resource_version=listed["metadata"]["resourceVersion"],
            ):
                seen = time.monotonic()
                program: dict[str, Any] = event["object"]
                ready = current_condition(program, "Ready")
                name = program["metadata"]["name"]
                if event["type"] == "DELETED":
                    with self._changed:
                        self.gone.add(name)
                        self._changed.notify_all()
                elif ready is not None and ready["status"] == "True" and name not in self.ready:
                    with self._changed:
                        self.ready[name] = seen
                        self._changed.notify_all()
        except BaseException as e:  # the waiter reports it
            with self._changed:
                self._failure = e
                self._changed.notify_all()

    def start(self) -> ReadyWatch:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._watch.stop()

    def wait(self, name: str, timeout: float) -> float:
        """When the watch saw `name` Ready (monotonic)."""
        self._wait_for(lambda: name in self.ready, name, "Ready", timeout)
        return self.ready[name]

    def wait_gone(self, name: str, timeout: float) -> None:
        self._wait_for(lambda: name in self.gone, name, "gone", timeout)

    def _wait_for(self, done: Callable[[], bool], name: str, what: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        with self._changed:
            while not done():
                if self._failure is not None:
                    raise RuntimeError(f"the Ready watch failed: {self._failure!r}")
                left = deadline - time.monotonic()
                if left <= 0:
                    status = (self.kube.program(self.namespace, name) or {}).get("status", {})
                    raise TimeoutError(
                        f"{self.namespace}/{name}: not {what} {timeout:.0f} s after it was asked: "
                        f"{status.get('conditions')}"
                    )
                self._changed.wait(left)


def sources(registry: LocalRegistry) -> dict[str, dict[str, Any]]:
    image = {"url": f"{registry.host}/{REPOSITORY}:v1", "pullPolicy": "Always"}
    return {
        "configmap": {"bytecode": {"configMapRef": {"name": CONFIG_MAP, "key": KEY}}},
        "image": {"bytecode": {"image": image}},
        "inline C": {"inline": C_SOURCE.read_text()},
    }


def _program(name: str, source: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": f"{names.GROUP}/{names.VERSION}",
        "kind": "EbpfProgram",
        "metadata": {"name": name},
        "spec": {
            "source": source,
            "function": FUNCTION,
            "attach": {"type": "CgroupSkb", "direction": "Egress"},
            "podSelector": {"matchLabels": {"app": "web"}},
        },
    }


@contextmanager
def published(kube: Kube, namespace: str, registry: LocalRegistry, workdir: Path) -> Iterator[None]:
    """The object in a ConfigMap of `namespace` and in an image on the registry."""
    if not OBJECT.exists():
        raise RuntimeError(f"{OBJECT} is missing: run `make bytecode`")
    data = OBJECT.read_bytes()
    kube.core.create_namespaced_config_map(
        namespace,
        {"metadata": {"name": CONFIG_MAP}, "binaryData": {KEY: base64.b64encode(data).decode()}},
    )
    builder = ImageBuilder(workdir, registry)
    try:
        local = builder.build(OBJECT, bpfman_labels({FUNCTION: "cgroup_skb"}))
        builder.push(local, REPOSITORY, "v1")
        yield
    finally:
        builder.close()


def measure(
    kube: Kube, namespace: str, registry: LocalRegistry, count: int, beside: int = BESIDE
) -> dict[str, list[float]]:
    """Seconds from create to Ready, `count` samples per kind, then `count` of the ConfigMap kind
    on a node already running `beside` programs. The namespace exists; its pods labelled app=web
    are what the programs attach to."""
    by_kind = sources(registry)
    figures: dict[str, list[float]] = {kind: [] for kind in KINDS}
    watch = ReadyWatch(kube, namespace).start()
    try:
        for i in range(count):
            for kind in KINDS:
                name = f"{kind.split()[0].lower()}-{i}"
                figures[kind].append(_sample(kube, namespace, watch, name, by_kind[kind]))
        if beside:
            for i in range(beside):  # they stay: measure_by_kind's caller deletes them all
                name = f"running-{i}"
                _create(kube, namespace, name, by_kind["configmap"])
                watch.wait(name, timeout=60)
            time.sleep(PAUSE)
            figures[f"configmap, beside {beside}"] = [
                _sample(kube, namespace, watch, f"beside-{i}", by_kind["configmap"]) for i in range(count)
            ]
    finally:
        watch.stop()
    return figures


def _create(kube: Kube, namespace: str, name: str, source: dict[str, Any]) -> None:
    kube.custom.create_namespaced_custom_object(
        names.GROUP, names.VERSION, namespace, names.PROGRAM_PLURAL, _program(name, source)
    )


def _sample(kube: Kube, namespace: str, watch: ReadyWatch, name: str, source: dict[str, Any]) -> float:
    """One program's create -> Ready; it is then deleted, and gone before the next sample: each
    sample is a new program beside the same others, not beside every sample before it (a node's
    state is written whole, and each write costs the API server more with each entry)."""
    start = time.monotonic()
    _create(kube, namespace, name, source)
    seconds = watch.wait(name, timeout=60) - start
    kube.custom.delete_namespaced_custom_object(
        names.GROUP, names.VERSION, namespace, names.PROGRAM_PLURAL, name
    )
    watch.wait_gone(name, timeout=60)
    time.sleep(PAUSE)
    return seconds


def lines(figures: dict[str, list[float]]) -> list[str]:
    out = []
    width = max(map(len, figures), default=0)
    for kind, samples in figures.items():
        ms = sorted(s * 1000 for s in samples)
        if not ms:
            continue
        p50 = statistics.median(ms)
        p90 = ms[min(len(ms) - 1, round(0.9 * (len(ms) - 1)))]
        out.append(
            f"apply -> Ready, {kind:{width}}  n={len(ms):3}  p50 {p50:7.1f} ms  p90 {p90:7.1f} ms  "
            f"max {ms[-1]:7.1f} ms"
        )
    return out
