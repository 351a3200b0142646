"""The real cosign CLI for tests: built once from the Go module proxy into the bpfleet cache
(e2e/scripts/build-cosign.sh), then used to make key pairs and sign images in a loopback registry
with no transparency log."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from e2e.tools import REPO_ROOT, cache_dir

COSIGN_VERSION = "v2.6.5"
BUILD_SCRIPT = REPO_ROOT / "e2e" / "scripts" / "build-cosign.sh"
PASSWORD = "bpfleet-test"


def cosign_binary() -> Path:
    """The cached cosign, built first when missing (minutes, once)."""
    path = cache_dir() / f"cosign-{COSIGN_VERSION}" / "cosign"
    if os.access(path, os.X_OK):
        return path
    print(f"[cosign] building cosign {COSIGN_VERSION} into {path.parent}", file=sys.stderr, flush=True)
    env = dict(os.environ, COSIGN_VERSION=COSIGN_VERSION)
    result = subprocess.run(
        ["bash", str(BUILD_SCRIPT)], stdout=subprocess.PIPE, text=True, env=env, check=False
    )
    if result.returncode != 0 or not os.access(path, os.X_OK):
        raise RuntimeError(f"{BUILD_SCRIPT} failed (exit {result.returncode}); see its stderr above")
    return path


@dataclass(frozen=True)
class KeyPair:
    private: Path
    public: Path

    def public_pem(self) -> bytes:
        return self.public.read_bytes()


def _run(args: list[str], cwd: Path, user: tuple[str, str] | None = None) -> None:
    env = dict(os.environ, COSIGN_PASSWORD=PASSWORD, COSIGN_YES="true", HOME=str(cwd))
    env.pop("SIGSTORE_REKOR_PUBLIC_KEY", None)
    if user is not None:  # go-containerregistry reads credentials from the docker config
        docker = cwd / ".docker"
        docker.mkdir(exist_ok=True)
        (docker / "config.json").write_text(user[1])
        env["DOCKER_CONFIG"] = str(docker)
    result = subprocess.run(
        [str(cosign_binary()), *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    if result.returncode != 0:
        raise RuntimeError(f"cosign {args[0]} exited {result.returncode}: {result.stderr[-2000:]}")


def generate_key_pair(directory: Path) -> KeyPair:
    directory.mkdir(parents=True, exist_ok=True)
    _run(["generate-key-pair"], directory)
    return KeyPair(directory / "cosign.key", directory / "cosign.pub")


def sign(key: KeyPair, reference: str, workdir: Path, dockerconfig: str | None = None) -> None:
    """Signs `reference` (registry/repo@sha256:...) with `key`; no transparency log."""
    _run(
        [
            "sign",
            "--key",
            str(key.private),
            "--tlog-upload=false",
            "--allow-insecure-registry",
            "--yes",
            reference,
        ],
        workdir,
        ("docker", dockerconfig) if dockerconfig else None,
    )
