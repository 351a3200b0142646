"""The agent's process never loads the `kubernetes` package (its models and pydantic cost ~30 MiB
of RSS on every node): what it needs of the API is bpfleet_api.rest."""

from __future__ import annotations

import subprocess
import sys

PROBE = """
import sys
import node_agent.main
heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("kubernetes", "pydantic", "kopf"))
print(",".join(heavy))
# VmRSS, not ru_maxrss: the peak survives exec and would be the parent's (pytest's).
rss = next(line for line in open("/proc/self/status") if line.startswith("VmRSS:"))
print(int(rss.split()[1]) // 1024)
"""


def test_importing_the_agent_loads_no_kubernetes_client():
    out = subprocess.run(
        [sys.executable, "-c", PROBE], capture_output=True, text=True, check=True, timeout=60
    )
    heavy, rss_mib = out.stdout.splitlines()
    assert heavy == "", f"the agent imports {heavy}"
    # With the kubernetes client the import alone was 68 MiB; without, about 30.
    assert int(rss_mib) < 45, f"importing the agent costs {rss_mib} MiB"
