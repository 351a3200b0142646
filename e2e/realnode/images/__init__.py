"""The real node's images, built with podman and imported into its containerd, each tagged by its
content so that an unchanged image is neither rebuilt nor imported again."""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from e2e.podman import podman, run_options
from e2e.realnode.daemons import log
from e2e.tools import REPO_ROOT

HERE = Path(__file__).resolve().parent
BUILD_IMAGES = REPO_ROOT / "e2e" / "scripts" / "build-images.sh"


@dataclass(frozen=True)
class Images:
    pause: str
    app: str
    operator: str
    agent: str

    def all(self) -> list[str]:
        return [self.pause, self.app, self.operator, self.agent]


def _exists(ref: str) -> bool:
    return podman("image", "exists", ref, check=False).returncode == 0


def _digest(*parts: bytes) -> str:
    return hashlib.sha256(b"\0".join(parts)).hexdigest()[:12]


def _build_context(ref: str, containerfile: Path, fill: Callable[[Path], None]) -> str:
    if _exists(ref):
        return ref
    with tempfile.TemporaryDirectory(prefix="bpfleet-image-") as context:
        fill(Path(context))
        log("podman build", image=ref)
        podman(
            "build",
            "--network",
            "host",
            "--pull=never",
            *run_options(),
            "-f",
            str(containerfile),
            "-t",
            ref,
            context,
        )
    return ref


def pause_image() -> str:
    source, containerfile = HERE / "pause.c", HERE / "pause.Containerfile"
    ref = f"localhost/bpfleet/pause:{_digest(source.read_bytes(), containerfile.read_bytes())}"

    def fill(context: Path) -> None:
        subprocess.run(["gcc", "-static", "-O2", "-o", str(context / "pause"), str(source)], check=True)

    return _build_context(ref, containerfile, fill)


def app_image() -> str:
    containerfile = HERE / "app.Containerfile"
    return _build_context(
        f"localhost/bpfleet/app:{_digest(containerfile.read_bytes())}", containerfile, lambda _: None
    )


def bpfleet_images() -> tuple[str, str]:
    """The operator and agent images of this tree (e2e/scripts/build-images.sh), tagged by image ID:
    the same tree gives the same IDs (podman's layer cache), so the same tags."""
    build_tag = f"realnode-build-{os.getpid()}"
    env = {**os.environ, "BPFLEET_IMAGE_TAG": build_tag}
    result = subprocess.run(
        ["bash", str(BUILD_IMAGES)], env=env, capture_output=True, text=True, timeout=3600, check=False
    )
    if result.returncode != 0:
        raise RuntimeError(f"{BUILD_IMAGES.name} failed:\n{result.stderr[-4000:]}")
    refs = []
    for name in ("operator", "agent"):
        built = f"localhost/bpfleet/{name}:{build_tag}"
        image_id = podman("image", "inspect", "--format", "{{.Id}}", built).stdout.strip()
        ref = f"localhost/bpfleet/{name}:{image_id[:12]}"
        podman("tag", built, ref)
        podman("untag", built, built)
        _untag_older(f"localhost/bpfleet/{name}", image_id[:12])
        refs.append(ref)
    return refs[0], refs[1]


def _untag_older(repository: str, current: str) -> None:
    """Drops the ID tags of earlier builds, and their images when nothing else names them."""
    listed = podman("images", "--format", "{{.Repository}}:{{.Tag}}", repository).stdout.split()
    for ref in listed:
        tag = ref.rpartition(":")[2]
        if ref.startswith(f"{repository}:") and re.fullmatch(r"[0-9a-f]{12}", tag) and tag != current:
            podman("rmi", ref, check=False)  # the image too, unless another tag or a container holds it


def build_all() -> Images:
    operator, agent = bpfleet_images()
    return Images(pause=pause_image(), app=app_image(), operator=operator, agent=agent)


def archive(ref: str, cache: Path) -> Path:
    """`podman save` of ref, kept in `cache` under its content-keyed name for the next import;
    archives of refs no longer built are dropped."""
    path = cache / (ref.replace("/", "_").replace(":", "@") + ".tar")
    if not path.exists():
        cache.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(".partial")
        podman("save", "--format", "docker-archive", "-o", str(partial), ref)
        partial.replace(path)
        name = path.name.partition("@")[0]
        for other in cache.glob(f"{name}@*.tar"):
            if other != path:
                other.unlink()
    return path


def import_into(ctr: list[str], refs: list[str], cache: Path) -> None:
    """Imports into containerd's k8s.io namespace what it does not have yet under that tag."""
    listed = subprocess.run([*ctr, "images", "ls", "-q"], capture_output=True, text=True, check=True)
    have = set(listed.stdout.split())
    for ref in refs:
        if ref not in have:
            log("importing into containerd", image=ref)
            subprocess.run(
                [*ctr, "images", "import", str(archive(ref, cache))], check=True, capture_output=True
            )
