"""bpfman-format bytecode images for tests: a tiny BPF object built with clang, packed by podman
(`FROM scratch`, the io.ebpf.* labels, the .o at the layer's root) and pushed to a loopback registry."""

from __future__ import annotations

import json
import shutil
import subprocess
import uuid
from pathlib import Path

from e2e.podman import podman
from e2e.registry import LocalRegistry

CLANG = "clang-14"
# Never loaded here: only its bytes travel (loading is the libbpf loader's job and test).
OBJECT_SOURCE = """\
struct __sk_buff;
__attribute__((section("cgroup_skb/egress"), used)) int count_egress(struct __sk_buff *skb) { return 1; }
__attribute__((section("cgroup_skb/ingress"), used)) int count_ingress(struct __sk_buff *skb) { return 1; }
char _license[] __attribute__((section("license"), used)) = "GPL";
"""
FUNCTIONS = {"count_egress": "cgroup_skb", "count_ingress": "cgroup_skb"}


def build_object(workdir: Path, name: str = "prog", marker: int = 0) -> Path:
    """A relocatable BPF object; `marker` changes its bytes (a different image, same programs)."""
    if shutil.which(CLANG) is None:
        raise RuntimeError(f"{CLANG} is missing: apt-get install -y clang-14")
    source = workdir / f"{name}.bpf.c"
    source.write_text(OBJECT_SOURCE + f"int bpfleet_marker = {marker};\n")
    out = workdir / f"{name}.o"
    subprocess.run([CLANG, "-target", "bpf", "-O2", "-c", str(source), "-o", str(out)], check=True)
    return out


def bpfman_labels(functions: dict[str, str] | None = None) -> dict[str, str]:
    return {"io.ebpf.programs": json.dumps(functions or FUNCTIONS), "io.ebpf.maps": "{}"}


class ImageBuilder:
    """Builds with podman and pushes; removes every local image it made on close()."""

    def __init__(self, workdir: Path, registry: LocalRegistry) -> None:
        self.workdir = workdir
        self.registry = registry
        self.local: list[str] = []

    def _creds(self) -> list[str]:
        user = self.registry.user
        return ["--creds", f"{user.name}:{user.password}"] if user else []

    def build(self, obj: Path, labels: dict[str, str], arch: str = "amd64") -> str:
        """A local image of `obj` with `labels`; returns its local name."""
        context = self.workdir / f"ctx-{uuid.uuid4().hex[:8]}"
        context.mkdir()
        shutil.copy(obj, context / obj.name)
        lines = ["FROM scratch"]
        lines += [f"LABEL {key}={json.dumps(value)}" for key, value in labels.items()]
        lines += [f"COPY {obj.name} /"]
        (context / "Containerfile").write_text("\n".join(lines) + "\n")
        name = f"localhost/bpfleet-test-{uuid.uuid4().hex[:12]}:latest"
        self.local.append(name)
        podman(
            "build",
            "--arch",
            arch,
            "--os",
            "linux",
            "-q",
            "-t",
            name,
            "-f",
            str(context / "Containerfile"),
            str(context),
        )
        return name

    def push(self, local: str, repository: str, tag: str, image_format: str = "oci") -> str:
        """Pushes `local` to repository:tag in the registry; returns the manifest digest."""
        digest_file = self.workdir / f"digest-{uuid.uuid4().hex[:8]}"
        dest = f"docker://{self.registry.host}/{repository}:{tag}"
        podman(
            "push",
            "-q",
            "--tls-verify=false",
            "--format",
            image_format,
            "--digestfile",
            str(digest_file),
            *self._creds(),
            local,
            dest,
        )
        return digest_file.read_text().strip()

    def push_index(self, locals_by_arch: dict[str, str], repository: str, tag: str) -> str:
        """An OCI index of one image per architecture; returns the index digest."""
        name = f"localhost/bpfleet-test-list-{uuid.uuid4().hex[:12]}"
        podman("manifest", "create", name)
        self.local.append(name)
        for arch, local in locals_by_arch.items():
            podman("manifest", "add", "--arch", arch, "--os", "linux", name, f"containers-storage:{local}")
        digest_file = self.workdir / f"digest-{uuid.uuid4().hex[:8]}"
        podman(
            "manifest",
            "push",
            "-q",
            "--all",
            "--tls-verify=false",
            "--digestfile",
            str(digest_file),
            *self._creds(),
            name,
            f"docker://{self.registry.host}/{repository}:{tag}",
        )
        return digest_file.read_text().strip()

    def close(self) -> None:
        for name in reversed(self.local):
            podman("manifest", "rm", name, check=False) if "-list-" in name else podman(
                "rmi", "-f", name, check=False
            )
        self.local.clear()
