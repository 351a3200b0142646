"""Recovery figures on this host; prints them, asserts nothing (make fault-figures).

  python -m e2e.fault_figures [--repeat 3] [--down-seconds 5] [--watch-seconds 30] [--soak-minutes 60]

api server restart -> converged   from the restarted kube-apiserver's /readyz to a pod created then
                                  attached on every node and the status counting it (Ready, N/N)
etcd restart -> converged         the same, etcd restarted
agent kill -> converged           an agent SIGKILLed, a pod created while it is down; from its start
                                  again to that pod attached and counted
watch stall -> detected           an informer's watch frozen (a proxy forwards nothing more); to the
                                  stall noticed, and to an object created meanwhile seen, with the
                                  production watch length (--watch-seconds) unless told otherwise
soak                              the soak's start and end figures (e2e/soak.py), --soak-minutes long
"""

from __future__ import annotations

import argparse
import signal
import statistics
import time
from pathlib import Path
from urllib.parse import urlparse

import yaml

from bpfleet_api.informer import Informer, WatchTiming
from bpfleet_api.rest import RestClient
from e2e.fleet import Fleet, FleetNode, local_fleet
from e2e.freeze_proxy import FreezingProxy
from e2e.harness import log, wait_for
from e2e.kube import cgroup_programs
from e2e.soak import Soak
from e2e.tools import REPO_ROOT

NAMESPACE = "figures"
PROGRAM = "web-egress-traffic"


class Figures:
    def __init__(self, fleet: Fleet) -> None:
        self.fleet, self.kube = fleet, fleet.kube
        self.made = 0

    def setup(self) -> None:
        self.kube.kubectl("create", "namespace", NAMESPACE)
        for node in self.fleet.nodes:
            self.pod(node)
        program = yaml.safe_load((REPO_ROOT / "examples" / "pod-traffic-counter.yaml").read_text())
        program["metadata"] = {"name": PROGRAM}
        self.kube.apply(NAMESPACE, program)
        self.wait_converged(time.monotonic(), 60)

    def pod(self, node: FleetNode) -> None:
        self.made += 1
        node.create_pod(NAMESPACE, f"web-{self.made}", {"app": "web"})

    def pods(self) -> list:
        return [p for n in self.fleet.nodes for p in n.pods if p.namespace == NAMESPACE]

    def wait_converged(self, since: float, timeout: float = 120) -> float:
        want = f"{len(self.pods())}/{len(self.pods())}"

        def done() -> bool:
            status = (self.kube.program(NAMESPACE, PROGRAM) or {}).get("status") or {}
            return (
                all(cgroup_programs(p.pod_cgroup) for p in self.pods())
                and (status.get("summary") or {}).get("pods") == want
                and self.kube.is_ready(NAMESPACE, PROGRAM)
            )

        wait_for(f"converged on {want}", done, timeout=timeout, interval=0.05)
        return time.monotonic() - since

    def restart(self, component: str, down: float) -> float:
        self.fleet.plane.stop_component(component, crash=True)
        time.sleep(down)
        self.fleet.plane.start_component(component)
        wait_for("the API server ready", self.fleet.plane.healthy, timeout=60, interval=0.05)
        back = time.monotonic()
        for node in self.fleet.nodes:
            self.pod(node)
        return self.wait_converged(back)

    def agent_kill(self, down: float) -> float:
        node = self.fleet.nodes[0]
        node.agent.kill(signal.SIGKILL)
        node.agent.stop()  # closes its log
        self.pod(node)
        time.sleep(down)
        started = time.monotonic()
        node.agent.start()
        return self.wait_converged(started)

    def watch_stall(self, watch_seconds: int, work: Path) -> tuple[float, float]:
        server = urlparse(self.fleet.plane.server_url)
        with FreezingProxy((server.hostname or "127.0.0.1", server.port or 443)) as proxy:
            config = proxy.kubeconfig(self.fleet.plane.kubeconfig, work / "proxied-kubeconfig")
            api = RestClient.load(str(config))
            informer = Informer(
                api,
                f"/api/v1/namespaces/{NAMESPACE}/configmaps",
                timing=WatchTiming(watch_seconds=watch_seconds),
            )
            informer.start()
            try:
                wait_for("the informer synced", informer.synced.is_set, timeout=30)
                time.sleep(1)
                proxy.freeze()
                frozen = time.monotonic()
                name = f"stall-{self.made}-{int(frozen)}"
                self.made += 1
                self.kube.core.create_namespaced_config_map(NAMESPACE, {"metadata": {"name": name}})
                timeout = watch_seconds + 30
                wait_for(
                    "the stall noticed", lambda: informer.stats.stalls > 0, timeout=timeout, interval=0.05
                )
                assert informer.stats.last_stall_at is not None
                wait_for(
                    "the object seen",
                    lambda: name in {o["metadata"]["name"] for o in informer.objects()},
                    timeout=timeout,
                    interval=0.05,
                )
                return informer.stats.last_stall_at - frozen, time.monotonic() - frozen
            finally:
                informer.stop()


def _line(name: str, samples: list[float]) -> str:
    return (
        f"{name:34} n={len(samples)}  median {statistics.median(samples):6.2f} s  max {max(samples):6.2f} s"
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m e2e.fault_figures", description=__doc__)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--down-seconds", type=float, default=5.0)
    parser.add_argument("--watch-seconds", type=int, default=WatchTiming().watch_seconds)
    parser.add_argument("--soak-minutes", type=float, default=60.0)
    args = parser.parse_args(argv)
    lines: list[str] = []
    with local_fleet(nodes=2) as fleet:
        figures = Figures(fleet)
        figures.setup()
        for component in ("kube-apiserver", "etcd"):
            log(f"restarting {component}", times=args.repeat)
            samples = [figures.restart(component, args.down_seconds) for _ in range(args.repeat)]
            lines.append(_line(f"{component} restart -> converged", samples))
        log("killing an agent", times=args.repeat)
        lines.append(_line("agent kill -> converged", [figures.agent_kill(1.0) for _ in range(args.repeat)]))
        log("freezing a watch", times=args.repeat, watch_seconds=args.watch_seconds)
        stalls = [figures.watch_stall(args.watch_seconds, fleet.work) for _ in range(args.repeat)]
        bound = WatchTiming(watch_seconds=args.watch_seconds).stall_seconds
        lines.append(_line(f"watch stall -> detected (<= {bound:.0f} s)", [s for s, _ in stalls]))
        lines.append(_line("watch stall -> object seen", [s for _, s in stalls]))
        print("\n".join(["", *lines, ""]), flush=True)
        log("soaking", minutes=args.soak_minutes)
        breaches = Soak(fleet.kube, fleet.nodes).run(args.soak_minutes, 30, 60)
        for breach in breaches:
            print(f"BREACH {breach}", flush=True)


if __name__ == "__main__":
    main()
