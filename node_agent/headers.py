"""Whether this node has the kernel headers BCC compiles programs against.

BCC finds the running kernel's headers through /lib/modules/<release>/build, usually a symlink into
/usr/src. In a container both come from the host (the chart mounts its /lib/modules and /usr/src);
without them every compile fails, so the agent says so once, plainly, when it starts.
"""

from __future__ import annotations

import os
from pathlib import Path

MODULES_DIR = Path("/lib/modules")


def check_kernel_headers(release: str | None = None, *, modules_dir: Path = MODULES_DIR) -> str | None:
    """None when the headers for `release` (default: the running kernel) are there, else what is
    missing and how to provide it, in one message for the log and the status."""
    release = release or os.uname().release
    build = modules_dir / release / "build"
    if build.is_dir():
        return None
    if build.is_symlink():
        found = (
            f"{build} points to {os.readlink(build)}, which does not exist (is the host's /usr/src mounted?)"
        )
    elif not modules_dir.is_dir():
        found = f"{modules_dir} does not exist (is the host's /lib/modules mounted?)"
    else:
        found = f"{build} does not exist"
    return (
        f"no kernel headers to compile with: {found}. "
        f"Install the headers for kernel {release} on the node (Debian: linux-headers-{release}) "
        "and mount the host's /lib/modules and /usr/src into the agent read-only; "
        "until then C sources fail to compile on this node (bytecode sources, and builtins from "
        "their bytecode, still run)."
    )
