"""Acceptance (issue 11): bytecode sources through the whole product. A user's CO-RE ELF from a
ConfigMap, and from a cosign-signed image in a real registry on loopback, is loaded with libbpf,
attached to the selected pods' cgroups and counts their traffic; what the agent's bytecode policy
refuses (unsigned, a registry off the allowlist, a pinned sha256 that differs) says why and touches
nothing else. bpftool is the judge of what is attached and counted."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from e2e import cosign
from e2e.bytecode_images import ImageBuilder, build_object
from e2e.controlplane import ControlPlane
from e2e.harness import ManagedProcess
from e2e.kube import Kube, cgroup_id, cgroup_programs, scratch_namespace
from e2e.registry import LocalRegistry
from e2e.tests.bytecode_nodes import (
    COUNTER_FUNCTION,
    COUNTER_MAP,
    Node,
    apply_ready,
    build_counter,
    bytecode_program,
    config_map,
    egress_counts,
    node_namespace,
    require_agent_bytecode,
    special_node,
    wait_failed,
)

MIN_LEN = 64  # the example's parameter: shorter packets are not counted
REPOSITORY = "bpfleet/pod-egress-counter"


@pytest.fixture(scope="module")
def counter_elf(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    require_agent_bytecode()
    return build_counter(tmp_path_factory.mktemp("elf"))


def assert_counts_only(node: Node, status: dict, counted, others: list) -> None:
    """`counted`'s packets of at least MIN_LEN bytes, and nothing of `others`, are in the map."""
    egress = Path(status["pinPath"]) / "maps" / COUNTER_MAP
    assert str(egress).startswith(str(node.bpffs_root))
    before = egress_counts(egress).get(cgroup_id(counted.pod_cgroup), 0)
    assert counted.send_udp("127.0.0.1", 9, count=10, size=1).sent == 10  # 29 bytes on the wire
    assert counted.send_udp("127.0.0.1", 9, count=25, size=100).sent == 25
    for other in others:
        assert other.send_udp("127.0.0.1", 9, count=25, size=100).sent == 25
    after = egress_counts(egress)
    assert after[cgroup_id(counted.pod_cgroup)] - before == 25
    for other in others:
        assert cgroup_id(other.pod_cgroup) not in after, f"{other.key} was counted"


def assert_attached_only(status: dict, pods: list, others: list) -> None:
    for pod in pods:
        [attached] = cgroup_programs(pod.pod_cgroup)
        assert attached["id"] == status["programId"]
        assert attached["attach_type"] == "cgroup_inet_egress"
    for other in others:
        assert cgroup_programs(other.pod_cgroup) == [], f"{other.key} was attached to"


# -- 1. a ConfigMap's ELF --------------------------------------------------------------------------


def test_configmap_elf_counts_the_selected_pod_only(kube: Kube, node_a, namespace: str, counter_elf: bytes):
    web = node_a.create_pod(namespace, "web-1", {"app": "web"})
    db = node_a.create_pod(namespace, "db-1", {"app": "db"})

    def remove_pods(other_ns: str) -> None:
        for pod in [p for p in node_a.pods if p.namespace == other_ns]:
            node_a.delete_pod(pod)

    with scratch_namespace(kube, "other", remove_pods) as other_ns:
        stranger = node_a.create_pod(other_ns, "web-1", {"app": "web"})
        kube.apply(namespace, config_map("counter", "prog.bpf.o", counter_elf))
        program = bytecode_program(
            "egress-elf",
            {"configMapRef": {"name": "counter", "key": "prog.bpf.o"}},
            node_a.name,
            sha256=hashlib.sha256(counter_elf).hexdigest(),
            parameters={"MIN_LEN": MIN_LEN},
        )
        status = apply_ready(kube, node_a, namespace, program)

        assert kube.program(namespace, "egress-elf")["status"]["pods"] == {
            "selected": 1,
            "attached": 1,
            "failed": 0,
        }
        [version] = kube.program_versions(namespace)
        assert version["spec"]["source"]["origin"] == f"configMap:{namespace}/counter/prog.bpf.o"
        assert COUNTER_MAP in status["maps"]
        assert_attached_only(status, [web], [db, stranger])
        assert_counts_only(node_a, status, web, [db, stranger])


# -- 2. signed images from a registry on loopback ----------------------------------------------------


@dataclass(frozen=True)
class Images:
    registry: LocalRegistry
    signed: str  # url of a signed image of the counter
    unsigned: str  # the same object in another repository, never signed
    tampered: str  # a signed tag pushed again with another object
    elf: bytes
    public_key: Path


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory, counter_elf: bytes) -> Iterator[Images]:
    work = tmp_path_factory.mktemp("images")
    key = cosign.generate_key_pair(work / "keys")
    (work / "prog.o").write_bytes(counter_elf)
    labels = {
        "io.ebpf.programs": json.dumps({COUNTER_FUNCTION: "cgroup_skb"}),
        "io.ebpf.maps": json.dumps({COUNTER_MAP: "hash"}),
    }
    with LocalRegistry() as registry:
        builder = ImageBuilder(work, registry)
        try:
            local = builder.build(work / "prog.o", labels)
            digest = builder.push(local, REPOSITORY, "v1")
            cosign.sign(key, f"{registry.host}/{REPOSITORY}@{digest}", work)
            builder.push(local, "bpfleet/unsigned", "v1")
            # Someone with push rights replaces a signed tag's content: its new digest is unsigned.
            digest = builder.push(local, "bpfleet/tampered", "v1")
            cosign.sign(key, f"{registry.host}/bpfleet/tampered@{digest}", work)
            other = builder.build(build_object(work, "other", marker=1), labels)
            builder.push(other, "bpfleet/tampered", "v1")
        finally:
            builder.close()
        yield Images(
            registry,
            signed=f"{registry.host}/{REPOSITORY}:v1",
            unsigned=f"{registry.host}/bpfleet/unsigned:v1",
            tampered=f"{registry.host}/bpfleet/tampered:v1",
            elf=counter_elf,
            public_key=key.public,
        )


@pytest.fixture(scope="module")
def signing_node(
    kube: Kube, control_plane: ControlPlane, operator: ManagedProcess, logs_dir: Path, images: Images
) -> Iterator[Node]:
    """A node whose agent requires signed bytecode, trusts the test key, and allows the registry."""
    with special_node(
        kube,
        control_plane,
        logs_dir,
        "signed",
        env={"BPFLEET_BYTECODE_REGISTRIES": images.registry.host},
        args=("--bytecode-public-key", str(images.public_key), "--require-signed-bytecode"),
    ) as node:
        yield node


@pytest.fixture
def signed_ns(kube: Kube, signing_node: Node) -> Iterator[str]:
    with node_namespace(kube, signing_node) as name:
        yield name


def _image(url: str) -> dict:
    return {"image": {"url": url, "pullPolicy": "Always"}}


def test_signed_image_runs_and_an_unsigned_one_is_refused(
    kube: Kube, signing_node: Node, signed_ns, images: Images
):
    web = signing_node.create_pod(signed_ns, "web-1", {"app": "web"})
    db = signing_node.create_pod(signed_ns, "db-1", {"app": "db"})
    program = bytecode_program(
        "signed", _image(images.signed), signing_node.name, parameters={"MIN_LEN": MIN_LEN}
    )
    status = apply_ready(kube, signing_node, signed_ns, program)
    assert_attached_only(status, [web], [db])
    assert_counts_only(signing_node, status, web, [db])

    unsigned = bytecode_program("unsigned", _image(images.unsigned), signing_node.name)
    kube.apply(signed_ns, unsigned)
    condition = wait_failed(kube, signed_ns, "unsigned", "SignatureInvalid")
    message = condition["message"]
    # What, and why: the image has no signature, and this node loads signed images only.
    assert "is unsigned" in message and "only images signed" in message, message
    assert "Traceback" not in message and "HTTP" not in message, message
    entry = kube.node_program(signed_ns, "unsigned", signing_node.name)["status"]
    assert not entry.get("programId"), entry
    assert not list((signing_node.bpffs_root / signed_ns / "unsigned").glob("*/prog"))
    # The signed program is untouched: same program, still the only one on the pod, still counting.
    assert kube.is_ready(signed_ns, "signed")
    again = kube.node_program(signed_ns, "signed", signing_node.name)["status"]
    assert again["programId"] == status["programId"]
    assert_attached_only(again, [web], [db])
    assert_counts_only(signing_node, again, web, [db])


def test_a_tampered_tag_an_unlisted_registry_and_a_wrong_pin_are_refused(
    kube: Kube, signing_node: Node, signed_ns, images: Images
):
    web = signing_node.create_pod(signed_ns, "web-1", {"app": "web"})
    kube.apply(signed_ns, bytecode_program("tampered", _image(images.tampered), signing_node.name))
    message = wait_failed(kube, signed_ns, "tampered", "SignatureInvalid")["message"]
    assert "is unsigned" in message, message

    # The same signed image, named by a host the allowlist does not hold: were the allowlist not
    # enforced, it would load.
    elsewhere = images.signed.replace("127.0.0.1:", "localhost:", 1)
    kube.apply(signed_ns, bytecode_program("elsewhere", _image(elsewhere), signing_node.name))
    message = wait_failed(kube, signed_ns, "elsewhere", "RegistryNotAllowed")["message"]
    assert "localhost:" in message and "allowlist" in message, message

    wrong = hashlib.sha256(b"not the counter").hexdigest()
    got = hashlib.sha256(images.elf).hexdigest()
    kube.apply(signed_ns, bytecode_program("pinned", _image(images.signed), signing_node.name, sha256=wrong))
    message = wait_failed(kube, signed_ns, "pinned", "SourceHashMismatch")["message"]
    assert wrong in message and got in message and "expected" in message, message

    assert cgroup_programs(web.pod_cgroup) == []
