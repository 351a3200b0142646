"""What the bytecode end-to-end tests share: the user's ELF built as docs/bytecode.md tells users to
(`make bytecode-object`), programs of bytecode sources, and nodes whose agent runs with flags of its
own (a bytecode policy, no kernel headers), removed with every trace afterwards."""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from e2e.controlplane import ControlPlane
from e2e.harness import agent_process, free_address, wait_for
from e2e.kube import Kube, scratch_namespace
from e2e.podsim import PodSimulator, cleanup_cgroup_tree, find_cgroup2_mount
from e2e.tests.conftest import BPFFS_BASE, RUN_ID, Node
from e2e.tests.programs import ebpf_program
from e2e.tools import REPO_ROOT

COUNTER_SOURCE = REPO_ROOT / "examples" / "bytecode" / "pod-egress-counter.bpf.c"
COUNTER_FUNCTION = "count_egress"
COUNTER_MAP = "egress"
AGENT_BYTECODE_DIR = REPO_ROOT / "build" / "bytecode"  # the agent's own objects (`make bytecode`)
SKB_EGRESS = {"type": "CgroupSkb", "direction": "Egress"}
NODE_LABEL = "bpfleet.test/node"


def build_counter(out: Path) -> bytes:
    """The example counter's ELF, built the way docs/bytecode.md tells a user to."""
    target = out / "pod-egress-counter.bpf.o"
    result = subprocess.run(
        ["make", "-s", "--no-print-directory", "bytecode-object", f"SRC={COUNTER_SOURCE}", f"OUT={target}"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, f"make bytecode-object failed (make deps installs clang):\n{result.stderr}"
    return target.read_bytes()


def require_agent_bytecode() -> None:
    """The agent's pod filter and builtins as CO-RE objects must exist: a missing build fails loudly."""
    missing = [
        name
        for name in ("bpfleet_entry.bpf.o", "pod-traffic-counter.bpf.o")
        if not (AGENT_BYTECODE_DIR / name).is_file()
    ]
    assert not missing, f"{', '.join(missing)} missing in {AGENT_BYTECODE_DIR}: run `make bytecode`"


def bytecode_program(
    name: str, bytecode: dict[str, Any], node: str, sha256: str | None = None, **spec: Any
) -> dict[str, Any]:
    """An EbpfProgram of a bytecode source for the app=web pods of `node` alone: agents of other
    nodes of the session (with other policies) must not take part."""
    source: dict[str, Any] = {"bytecode": bytecode}
    if sha256 is not None:
        source["sha256"] = sha256
    return ebpf_program(
        name,
        {
            "source": source,
            "function": COUNTER_FUNCTION,
            "attach": SKB_EGRESS,
            "podSelector": {"matchLabels": {"app": "web"}},
            "nodeSelector": {"matchLabels": {NODE_LABEL: node}},
            **spec,
        },
    )


def config_map(name: str, key: str, data: bytes) -> dict[str, Any]:
    """A ConfigMap with the ELF in binaryData, as `kubectl create configmap --from-file` makes it."""
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": name},
        "binaryData": {key: base64.b64encode(data).decode()},
    }


def egress_counts(map_pin: Path) -> dict[int, int]:
    """The example counter's map: pod cgroup id -> packets (decoded through the map's BTF)."""
    shown = subprocess.run(
        ["bpftool", "-j", "map", "dump", "pinned", str(map_pin)], capture_output=True, text=True, check=True
    )
    return {
        int(e["formatted"]["key"]): int(e["formatted"]["value"]) for e in json.loads(shown.stdout or "[]")
    }


def apply_ready(kube: Kube, node: Node, namespace: str, program: dict[str, Any]) -> dict[str, Any]:
    """Applies, waits for Ready True (saying what the status was if not), returns `node`'s entry."""
    name = program["metadata"]["name"]
    kube.apply(namespace, program)
    try:
        wait_for(f"{name} Ready", lambda: kube.is_ready(namespace, name), timeout=30)
    except TimeoutError as e:
        status = (kube.program(namespace, name) or {}).get("status")
        raise AssertionError(f"{e}; status: {status}; agent log:\n{node.agent.log_tail(15)}") from None
    return kube.node_program(namespace, name, node.name)["status"]


def wait_failed(kube: Kube, namespace: str, name: str, reason: str, timeout: float = 30) -> dict[str, Any]:
    """Waits for Ready False with `reason`; returns the condition."""

    def failed() -> bool:
        cond = kube.condition(namespace, name) or {}
        return cond.get("status") == "False" and cond.get("reason") == reason

    try:
        wait_for(f"{name} Ready False {reason}", failed, timeout=timeout)
    except TimeoutError as e:
        raise AssertionError(f"{e}; condition: {kube.condition(namespace, name)}") from None
    condition = kube.condition(namespace, name)
    assert condition is not None
    return condition


@contextmanager
def special_node(
    kube: Kube,
    control_plane: ControlPlane,
    logs_dir: Path,
    role: str,
    env: dict[str, str] | None = None,
    args: tuple[str, ...] = (),
) -> Iterator[Node]:
    """A node of its own whose agent runs with `env` and `args`; afterwards the agent is stopped and
    the node, its cgroups, pins and bytecode cache are gone (other tests' programs must not target it)."""
    name = f"node-{role}-{uuid.uuid4().hex[:4]}"
    cgroup_root = find_cgroup2_mount() / f"bpfleet-e2e-{RUN_ID}" / name
    bpffs_root = BPFFS_BASE / name
    cache = Path(f"/tmp/bpfleet-e2e-bytecode-cache-{RUN_ID}-{name}")
    sim = PodSimulator(kube.api, name, cgroup_root)
    agent = agent_process(
        control_plane.kubeconfig, name, cgroup_root, bpffs_root, logs_dir, metrics_address=free_address()
    )
    agent.argv += list(args)
    agent.env.update(
        {"BPFLEET_HEARTBEAT_SECONDS": "1", "BPFLEET_BYTECODE_CACHE_DIR": str(cache), **(env or {})}
    )
    try:
        sim.ensure_node(labels={NODE_LABEL: name})
        kube.forget_agent(name)
        agent.start()
        try:
            wait_for(
                f"the agent on {name} to publish its BpfleetNode", lambda: kube.runs_agent(name), timeout=60
            )
        except TimeoutError as e:
            raise AssertionError(f"{e}; agent log:\n{agent.log_tail()}") from None
        kube.bpffs_roots[name] = bpffs_root
        yield Node(name, sim, agent, bpffs_root)
    finally:
        agent.stop()
        sim.cleanup()
        cleanup_cgroup_tree(cgroup_root)
        shutil.rmtree(bpffs_root, ignore_errors=True)
        shutil.rmtree(cache, ignore_errors=True)
        kube.bpffs_roots.pop(name, None)
        kube.kubectl("delete", "node", name, "--ignore-not-found", "--wait=false", check=False)
        kube.forget_agent(name)


@contextmanager
def node_namespace(kube: Kube, node: Node) -> Iterator[str]:
    """A scratch namespace whose pods on `node` are removed with it (after its programs)."""

    def remove_pods(namespace: str) -> None:
        for pod in [p for p in node.pods if p.namespace == namespace]:
            node.delete_pod(pod)

    with scratch_namespace(kube, "t", remove_pods) as name:
        yield name
