"""The agent SIGKILLed at random points, over many cycles (BPFLEET_KILL_CYCLES, default 100): at a
named fault point (mid-compile, mid-publish, between attach and pin, mid-detach, mid-update; see
node_agent/fault_points.py) or after a random delay; with its process group, or alone (its compile
worker then outlives it). After each restart, with bpftool as the judge:
one attachment per selected pod, none on the others, no program, map, link or pin of any earlier
version, no staging directory, no compile worker left, and the program's status right."""

from __future__ import annotations

import os
import random
import signal
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from e2e import bpf_census
from e2e.harness import ManagedProcess, wait_for
from e2e.kube import Kube, cgroup_programs

pytestmark = pytest.mark.e2e

CYCLES = int(os.environ.get("BPFLEET_KILL_CYCLES", "100"))
SEED = int(os.environ.get("BPFLEET_KILL_SEED", str(random.randrange(1 << 30))))
POINTS = ("compile", "publish", "attach-pin", "detach", "update-repin", "update-unpin")
PROGRAM = "killed"
TAG = uuid.uuid4().hex[:6]
FUNCTION = f"kf_{TAG}"  # kernel names unique to this run: bpftool finds every copy ever loaded
MAP = f"km_{TAG}"
SOURCE = f"""
BPF_HASH({MAP}, u32, u64, 16);
int {FUNCTION}(struct __sk_buff *skb) {{
    u32 key = GEN;
    u64 zero = 0, *seen = {MAP}.lookup_or_try_init(&key, &zero);
    if (seen) __sync_fetch_and_add(seen, 1);
    return 1;
}}
"""
MAX_PODS = 3


def _manifest(generation: int) -> dict[str, Any]:
    return {
        "apiVersion": "bpfleet.io/v1alpha1",
        "kind": "EbpfProgram",
        "metadata": {"name": PROGRAM},
        "spec": {
            "source": {"inline": SOURCE},
            "function": FUNCTION,
            "attach": {"type": "CgroupSkb", "direction": "Egress"},
            "podSelector": {"matchLabels": {"app": "kill"}},
            "parameters": {"GEN": generation},
        },
    }


class Cycles:
    """The cluster's wanted state as the test drives it, and the judge of what the kernel holds."""

    def __init__(self, kube: Kube, node: Any, namespace: str, pause_file: Path) -> None:
        self.kube, self.node, self.namespace, self.pause_file = kube, node, namespace, pause_file
        self.generation = 0
        self.made = 0
        self.restarted_at = 0  # the agent log's size when it was last started
        self.rng = random.Random(SEED)

    @property
    def agent(self) -> ManagedProcess:
        return self.node.agent

    def selected(self) -> list[Any]:
        return [p for p in self.node.pods if p.namespace == self.namespace and p.labels.get("app") == "kill"]

    def unselected(self) -> list[Any]:
        return [p for p in self.node.pods if p.namespace == self.namespace and p.labels.get("app") != "kill"]

    # -- what a cycle does

    def bump(self) -> None:
        self.generation += 1
        self.kube.apply(self.namespace, _manifest(self.generation))

    def select_one(self, besides: Any = None) -> None:
        """Selects a pod: an unselected one other than `besides` (relabelling the pod just
        unselected back could reach the agent as no change at all), or a new one."""
        candidates = [p for p in self.unselected() if besides is None or p.uid != besides.uid]
        if candidates:
            pod = self.rng.choice(candidates)
            self.node.sim.set_labels(pod, {"app": "kill"})
        else:
            self.made += 1
            self.node.create_pod(self.namespace, f"pod-{self.made}", {"app": "kill"})

    def unselect_one(self) -> Any:
        pod = self.rng.choice(self.selected())
        if len(self.unselected()) >= MAX_PODS - 1:
            self.node.delete_pod(pod)  # the kernel detaches with the cgroup; the agent drops the pin
        else:
            self.node.sim.set_labels(pod, {"app": "off"})
        return pod

    def act(self, point: str) -> None:
        """Something the agent will do through `point` (or near it, for random kills)."""
        if point in ("compile", "publish"):
            self.bump()
        elif point.startswith("update"):
            if not self.selected():
                self.select_one()
            self.bump()
        elif point == "attach-pin" or (point == "detach" and not self.selected()):
            unselected = self.unselect_one() if len(self.selected()) >= MAX_PODS else None
            self.select_one(besides=unselected)
        else:
            self.unselect_one()

    def kill_at(self, point: str | None) -> str:
        """Runs one cycle's action and kills the agent at `point`, or after a random delay."""
        offset = self.agent.log_path.stat().st_size
        self.pause_file.write_text(point or "")
        action = point or self.rng.choice(POINTS)
        self.act(action)
        if point is None:
            time.sleep(self.rng.uniform(0.0, 0.8))
        else:
            wait_for(
                f"the agent paused at {point}",
                lambda: f'"point": "{point}"' in _log_since(self.agent, offset),
                timeout=30,
            )
        tree = bpf_census.process_tree(self.agent.process.pid) if self.agent.process else set()
        if self.rng.random() < 0.5 and self.agent.process is not None:
            # The agent alone, as the OOM killer would: a compile worker outlives it, and must go.
            os.kill(self.agent.process.pid, signal.SIGKILL)
            self.agent.process.wait(timeout=30)
        else:
            self.agent.kill(signal.SIGKILL)  # its whole process group, as a container's end does
        self.agent.stop()  # a no-op on the process, which is gone; closes its log
        self.pause_file.write_text("")
        self.restarted_at = self.agent.log_path.stat().st_size
        wait_for(
            "no process of the killed agent left (its compile workers included)",
            lambda: not any(bpf_census.alive(pid) for pid in tree),
            timeout=30,
        )
        self.agent.start()
        return f"{point or 'random'} ({action})"

    # -- the judge

    def violations(self) -> list[str]:
        found: list[str] = []
        program_dir = self.node.bpffs_root / self.namespace / PROGRAM
        versions = sorted(program_dir.iterdir()) if program_dir.exists() else []
        if len(versions) != 1 or versions[0].name.startswith("staging-"):
            return [f"version directories {[v.name for v in versions]}"]
        version = versions[0]
        prog_id = bpf_census.pinned_id("prog", version / "prog")
        loaded = bpf_census.programs(FUNCTION)
        if [p["id"] for p in loaded] != [prog_id]:
            found.append(f"programs named {FUNCTION}: {[p['id'] for p in loaded]}, pinned {prog_id}")
        if prog_id is None:
            return found
        [ours] = [p for p in loaded if p["id"] == prog_id] or [{"map_ids": []}]
        maps = {m["id"] for m in bpf_census.maps(MAP)}
        if maps != set(ours.get("map_ids", [])):
            found.append(f"maps named {MAP}: {sorted(maps)}, the program's {ours.get('map_ids')}")
        selected, unselected = self.selected(), self.unselected()
        for pod in selected:
            ids = [p["id"] for p in cgroup_programs(pod.pod_cgroup)]
            if ids != [prog_id]:
                found.append(f"selected pod {pod.name}: programs {ids}, want [{prog_id}]")
        for pod in unselected:
            ids = [p["id"] for p in cgroup_programs(pod.pod_cgroup)]
            if ids:
                found.append(f"unselected pod {pod.name}: programs {ids}")
        kernel_links = bpf_census.links({prog_id})
        if len(kernel_links) != len(selected):
            found.append(f"{len(kernel_links)} kernel links of the program for {len(selected)} pods")
        link_pins = sorted(p.name for p in (version / "links").glob("*"))
        if link_pins != sorted(p.uid for p in selected):
            found.append(f"link pins {link_pins}, selected pods {sorted(p.uid for p in selected)}")
        expected_pins = {version / "prog", *(version / "maps" / name for name in [MAP])}
        expected_pins |= {version / "links" / p.uid for p in selected}
        extra = set(bpf_census.pins(self.node.bpffs_root / self.namespace)) - expected_pins
        # The version's own maps pinned again by layout, and as kept or reset (map reuse), are its own.
        extra = {
            pin
            for pin in extra
            if not (
                pin.parent.parent == version
                and pin.parent.name in ("layouts", "kept", "reset")
                and bpf_census.pinned_id("map", pin) in set(ours.get("map_ids", []))
            )
        }
        if extra:
            found.append(f"pins nobody needs: {sorted(str(p) for p in extra)}")
        status = (self.kube.program(self.namespace, PROGRAM) or {}).get("status") or {}
        want = f"{len(selected)}/{len(selected)}"
        pods = (status.get("summary") or {}).get("pods")
        if pods != want or not self.kube.is_ready(self.namespace, PROGRAM):
            found.append(f"status pods {pods}, want {want} and Ready")
        program = self.kube.program(self.namespace, PROGRAM) or {"metadata": {}}
        if status.get("observedGeneration") != program["metadata"].get("generation"):
            found.append("status not of the current generation")
        return found

    def converged(self, what: str, timeout: float = 30) -> None:
        last: list[str] = []

        def clean() -> bool:
            nonlocal last
            last = self.violations()
            return not last

        try:
            wait_for(f"converged after {what}", clean, timeout=timeout, interval=0.1)
        except TimeoutError as e:
            raise AssertionError(f"after {what} (seed {SEED}): {last}") from e


def _log_since(process: ManagedProcess, offset: int) -> str:
    with open(process.log_path, "rb") as log:
        log.seek(offset)
        return log.read().decode(errors="replace")


@pytest.fixture
def paused_agent(node_a: Any, tmp_path: Path) -> Iterator[Path]:
    """node_a's agent, started again with a pause file; as before afterwards."""
    pause_file = tmp_path / "pause-at"
    pause_file.write_text("")
    node_a.agent.stop()
    node_a.agent.env["BPFLEET_TEST_PAUSE_FILE"] = str(pause_file)
    node_a.agent.start()
    try:
        yield pause_file
    finally:
        pause_file.write_text("")
        node_a.agent.stop()
        node_a.agent.env.pop("BPFLEET_TEST_PAUSE_FILE", None)
        node_a.agent.start()


def test_agent_killed_at_random_points_leaves_one_attachment_and_nothing_else(
    kube: Kube, node_a: Any, namespace: str, paused_agent: Path
):
    cycles = Cycles(kube, node_a, namespace, paused_agent)
    cycles.node.create_pod(namespace, "pod-0", {"app": "kill"})
    cycles.bump()
    cycles.converged("the first apply")
    started = time.monotonic()
    done: dict[str, int] = {}
    for n in range(CYCLES):
        # Two in three at a named point, in turn; the others after a random delay.
        point = POINTS[(n // 3 * 2 + n % 3) % len(POINTS)] if n % 3 != 2 else None
        at = time.monotonic()
        what = cycles.kill_at(point)
        killed = time.monotonic()
        # A judge satisfied before the new agent's first pass would prove nothing of that agent.
        wait_for(
            "the restarted agent's first pass",
            lambda: "initial reconcile done" in _log_since(cycles.agent, cycles.restarted_at),
            timeout=60,
        )
        cycles.converged(f"cycle {n}: killed at {what}")
        print(f"cycle {n} {what}: killed in {killed - at:.1f}s, converged {time.monotonic() - killed:.1f}s")
        done[point or "random"] = done.get(point or "random", 0) + 1
    took = time.monotonic() - started
    print(f"{CYCLES} kill cycles in {took:.0f}s (seed {SEED}): {done}")
    assert sum(done.values()) == CYCLES
