"""The registry tier: a real distribution registry on loopback, images built by podman from an
object clang built, signed by the real cosign."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from e2e import cosign
from e2e.bytecode_images import ImageBuilder, bpfman_labels, build_object
from e2e.registry import LocalRegistry
from node_agent.oci.fetch import BytecodePolicy, ImageSource, fetch_image


@dataclass
class Images:
    registry: LocalRegistry
    builder: ImageBuilder
    workdir: Path
    obj: Path  # the object of image `prog:v1`
    digest: str  # prog:v1's manifest digest

    def url(self, repository: str, tag: str | None = None, digest: str | None = None) -> str:
        return (
            f"{self.registry.host}/{repository}"
            + (f":{tag}" if tag else "")
            + (f"@{digest}" if digest else "")
        )

    def push_object(
        self, repository: str, tag: str, marker: int, labels: dict[str, str] | None = None
    ) -> tuple[Path, str]:
        obj = build_object(self.workdir, f"{repository.replace('/', '-')}-{tag}-{marker}", marker)
        return obj, self.builder.push(self.builder.build(obj, labels or bpfman_labels()), repository, tag)


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Images]:
    workdir = tmp_path_factory.mktemp("images")
    with LocalRegistry() as registry:
        builder = ImageBuilder(workdir, registry)
        try:
            obj = build_object(workdir)
            digest = builder.push(builder.build(obj, bpfman_labels()), "bpf/prog", "v1")
            yield Images(registry, builder, workdir, obj, digest)
        finally:
            builder.close()


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> tuple[cosign.KeyPair, cosign.KeyPair]:
    base = tmp_path_factory.mktemp("keys")
    return cosign.generate_key_pair(base / "good"), cosign.generate_key_pair(base / "other")


@pytest.fixture
def pull(tmp_path: Path) -> Callable[..., bytes]:
    """fetch_image with a fresh cache per test; keyword arguments override the policy and call."""

    def run(
        url: str,
        function: str = "count_egress",
        *,
        cluster: bool = True,
        pull_policy: str = "IfNotPresent",
        secret: str | None = None,
        read_secret: Callable[[str, str], dict[str, bytes] | None] = lambda _ns, _name: None,
        **policy: object,
    ) -> bytes:
        policy.setdefault("cache_dir", tmp_path / "cache")
        return fetch_image(
            ImageSource(url, pull_policy, secret),
            namespace="tenant-a",
            cluster=cluster,
            policy=BytecodePolicy(**policy),  # type: ignore[arg-type]
            read_secret=read_secret,
            function=function,
            arch="amd64",
        )

    return run
