"""Locations of the host tools (kubectl, helm) that e2e/scripts/install-host-deps.sh installs."""

from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
INSTALL_SCRIPT = REPO_ROOT / "e2e" / "scripts" / "install-host-deps.sh"
KNOWN_TOOLS = ("kubectl", "helm")


class ToolNotInstalledError(FileNotFoundError):
    """A host tool is missing from the bpfleet cache."""


def cache_dir() -> Path:
    """Root of bpfleet's cache: $BPFLEET_CACHE, else ~/.cache/bpfleet (same rule as the scripts)."""
    override = os.environ.get("BPFLEET_CACHE")
    return Path(override) if override else Path.home() / ".cache" / "bpfleet"


def tool_path(name: str) -> Path:
    """Absolute path of an installed tool; raises ToolNotInstalledError with the fix when it is absent."""
    if name not in KNOWN_TOOLS:
        raise ValueError(f"unknown tool {name!r}; expected one of {', '.join(KNOWN_TOOLS)}")
    path = cache_dir() / "bin" / name
    if not (path.is_file() and os.access(path, os.X_OK)):
        raise ToolNotInstalledError(f"{name} is not installed at {path}; run: bash {INSTALL_SCRIPT}")
    return path
