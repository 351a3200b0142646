"""What a node's kernel says, read on the node itself: a privileged pod of the agent's image (it
has bpftool) on that node, with the host's pids, cgroups and bpffs, prints it as JSON. Works
wherever the pods run (kind's nodes are containers), and after the chart is uninstalled."""

from __future__ import annotations

import json
import uuid
from typing import Any

from e2e.harness import wait_for
from e2e.kube import Kube

# argv: the pod UIDs whose pod-level cgroups to read, then the bpffs directory to list. The pod
# cgroup is the one the pod's processes are in (kubelet and runc made it), found in /proc by UID:
# cgroupfs names it pod<uid>, systemd ...-pod<uid with _>.slice.
SCRIPT = r"""
import json, os, subprocess, sys
uids, bpffs = sys.argv[1:-1], sys.argv[-1]
mount = next(l.split()[4] for l in open("/proc/self/mountinfo") if l.split(" - ")[1].startswith("cgroup2 "))
cgroups = {}
for pid in filter(str.isdigit, os.listdir("/proc")):
    try:
        line = next(l for l in open(f"/proc/{pid}/cgroup") if l.startswith("0::"))
    except (OSError, StopIteration):
        continue
    parts = line[3:].strip().split("/")
    for uid in uids:
        for i, part in enumerate(parts):
            if part == f"pod{uid}" or part.endswith(f"pod{uid.replace('-', '_')}.slice"):
                cgroups[uid] = mount + "/".join(parts[: i + 1])
out = {"cgroups": {}, "bpffs": None}
for uid, path in cgroups.items():
    shown = subprocess.run(["bpftool", "-j", "cgroup", "show", path], capture_output=True, text=True)
    out["cgroups"][uid] = {"path": path, "programs": json.loads(shown.stdout.strip() or "[]")}
if os.path.isdir(bpffs):
    files = [os.path.join(d, f) for d, _, fs in os.walk(bpffs) for f in fs]
    out["bpffs"] = sorted(os.path.relpath(f, bpffs) for f in files)
print(json.dumps(out))
"""


def inspect(kube: Kube, namespace: str, node: str, image: str, uids: list[str], bpffs: str) -> dict[str, Any]:
    """{"cgroups": {uid: {"path", "programs": bpftool's list}}, "bpffs": files below `bpffs` or None}.
    A UID without a running process on the node has no entry."""
    name = f"nodeside-{uuid.uuid4().hex[:6]}"
    mounts = {"cgroup": "/sys/fs/cgroup", "bpffs": "/sys/fs/bpf"}
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name},
        "spec": {
            "nodeName": node,
            "hostPID": True,
            "restartPolicy": "Never",
            "tolerations": [{"operator": "Exists"}],
            "containers": [
                {
                    "name": "inspect",
                    "image": image,
                    "command": ["python", "-c", SCRIPT, *uids, bpffs],
                    "securityContext": {"privileged": True},
                    "volumeMounts": [{"name": key, "mountPath": path} for key, path in mounts.items()],
                }
            ],
            "volumes": [{"name": key, "hostPath": {"path": path}} for key, path in mounts.items()],
        },
    }
    kube.apply(namespace, pod)
    try:
        wait_for(
            f"{name} done",
            lambda: kube.core.read_namespaced_pod(name, namespace).status.phase in ("Succeeded", "Failed"),
            timeout=120,
            interval=0.5,
        )
        logs = kube.kubectl("logs", "-n", namespace, name)
        assert kube.core.read_namespaced_pod(name, namespace).status.phase == "Succeeded", logs
        return dict(json.loads(logs.strip().splitlines()[-1]))
    finally:
        kube.kubectl("delete", "pod", "-n", namespace, name, "--wait=false", check=False)
