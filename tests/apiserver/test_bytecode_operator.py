"""The operator for real, against the control plane, without agents, on bytecode sources and pins:
a ConfigMap's ELF becomes a version's bytecode, editing the ConfigMap rolls the program to a new
version, an image is passed to the agents, and a content pin that does not match (or an object that
is not a BPF ELF) stops the program with its reason before any node sees it."""

from __future__ import annotations

import base64
import hashlib
import json
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes.client import V1ConfigMap, V1Node, V1ObjectMeta

from bpfleet_api import names
from bpfleet_operator.bytecode_sources import MAX_ELF_BYTES
from e2e.harness import operator_process, wait_for
from e2e.kube import Kube
from e2e.tests.programs import ebpf_program
from tests.apiserver.operator_support import (
    agent_removed,
    agent_starts,
    delete_quietly,
    namespace_for_a_test,
    program_versions,
    wait_operator_ready,
)
from tests.unit.bpf_elf import bpf_object

pytestmark = pytest.mark.apiserver

RUN = uuid.uuid4().hex[:6]
NODE_LABEL = "bpfleet.test/bytecode"  # on this module's Node only: its programs target it alone
FIRST, SECOND = bpf_object(b"first program"), bpf_object(b"second program")


@pytest.fixture(scope="module")
def cluster(crds: Kube, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Kube]:
    """CRDs, a Node that runs an agent (a BpfleetNode) and the operator."""
    node = f"bytecode-{RUN}"
    crds.core.create_node(V1Node(metadata=V1ObjectMeta(name=node, labels={NODE_LABEL: RUN})))
    agent_starts(crds, node)
    process = operator_process(crds.kubeconfig, tmp_path_factory.mktemp("bytecode-operator"))
    process.env["BPFLEET_AGENT_SILENCE_SECONDS"] = "3600"
    process.env["BPFLEET_RESYNC_SECONDS"] = "3600"  # a ConfigMap edit must roll the program by itself
    process.start()
    try:
        wait_operator_ready(process.log_path)
        yield crds
    finally:
        process.stop()
        delete_quietly(lambda: crds.core.delete_node(node))
        agent_removed(crds, node)


@pytest.fixture
def namespace(cluster: Kube) -> Iterator[str]:
    with namespace_for_a_test(cluster, "bytecode") as created:
        yield created


def apply(kube: Kube, namespace: str, name: str, source: dict[str, Any]) -> None:
    spec = {
        "source": source,
        "function": "count_packets",
        "attach": {"type": "CgroupSkb", "direction": "Egress"},
        "podSelector": {},
        "nodeSelector": {"matchLabels": {NODE_LABEL: RUN}},
    }
    kube.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(ebpf_program(name, spec)))


def put_elf(kube: Kube, namespace: str, name: str, elf: bytes, *, create: bool) -> None:
    body = V1ConfigMap(
        metadata=V1ObjectMeta(name=name), binary_data={"prog.bpf.o": base64.b64encode(elf).decode()}
    )
    if create:
        kube.core.create_namespaced_config_map(namespace, body)
    else:
        kube.core.replace_namespaced_config_map(name, namespace, body)


def served_source(kube: Kube, namespace: str, name: str) -> dict[str, Any] | None:
    """spec.source of the version the module's node is told to run, once it is told one."""
    version = program_versions(kube, namespace, name).get(f"bytecode-{RUN}")
    if version is None:
        return None
    found = kube.custom.get_namespaced_custom_object(
        names.GROUP, names.VERSION, namespace, names.VERSION_PLURAL, version
    )
    return dict(found["spec"]["source"])


def ready(kube: Kube, namespace: str, name: str) -> dict[str, Any]:
    program = kube.custom.get_namespaced_custom_object(
        names.GROUP, names.VERSION, namespace, names.PROGRAM_PLURAL, name
    )
    status = program.get("status") or {}
    return next((c for c in status.get("conditions", []) if c["type"] == "Ready"), {})


def test_a_config_map_elf_is_the_versions_bytecode_and_an_edit_rolls_it(cluster: Kube, namespace: str):
    put_elf(cluster, namespace, "progs", FIRST, create=True)
    source = {"bytecode": {"configMapRef": {"name": "progs", "key": "prog.bpf.o"}}}
    apply(cluster, namespace, "counter", source)
    wait_for("a version on the node", lambda: served_source(cluster, namespace, "counter"), 30)
    assert served_source(cluster, namespace, "counter") == {
        "bytecode": {"data": base64.b64encode(FIRST).decode()},
        "sha256": hashlib.sha256(FIRST).hexdigest(),
        "origin": f"configMap:{namespace}/progs/prog.bpf.o",
    }
    first_version = program_versions(cluster, namespace, "counter")[f"bytecode-{RUN}"]

    # The ConfigMap's watch alone must bring the edit: no resync runs, and the reconcile that the
    # node state's own echo queues (a second after it) is let pass first.
    time.sleep(3)
    put_elf(cluster, namespace, "progs", SECOND, create=False)

    def second_served() -> bool:
        found = served_source(cluster, namespace, "counter") or {}
        return found.get("sha256") == hashlib.sha256(SECOND).hexdigest()

    wait_for("the edited ELF on the node", second_served, 20)
    assert program_versions(cluster, namespace, "counter")[f"bytecode-{RUN}"] != first_version
    assert (served_source(cluster, namespace, "counter") or {})["bytecode"]["data"] == (
        base64.b64encode(SECOND).decode()
    )


def test_an_image_is_passed_to_the_node_with_its_pin(cluster: Kube, namespace: str):
    pin = hashlib.sha256(FIRST).hexdigest()
    image = {"url": "localhost:5000/progs/counter:v1", "pullPolicy": "Always"}
    apply(cluster, namespace, "from-image", {"bytecode": {"image": image}, "sha256": pin})
    wait_for("a version on the node", lambda: served_source(cluster, namespace, "from-image"), 30)
    assert served_source(cluster, namespace, "from-image") == {
        "bytecode": {"image": image},
        "sha256": pin,
        "origin": "image:localhost:5000/progs/counter:v1",
    }


@pytest.mark.parametrize("kind", ["inline C", "config map ELF"])
def test_a_pin_that_does_not_match_stops_the_program_before_any_node(
    cluster: Kube, namespace: str, kind: str
):
    wrong = "0" * 64
    if kind == "inline C":
        text = "int count_packets(struct __sk_buff *skb) { return 1; }"
        source: dict[str, Any] = {"inline": text, "sha256": wrong}
        actual = hashlib.sha256(text.encode()).hexdigest()
    else:
        put_elf(cluster, namespace, "progs", FIRST, create=True)
        source = {"bytecode": {"configMapRef": {"name": "progs", "key": "prog.bpf.o"}}, "sha256": wrong}
        actual = hashlib.sha256(FIRST).hexdigest()
    apply(cluster, namespace, "pinned", source)
    wait_for("the mismatch in status", lambda: ready(cluster, namespace, "pinned").get("reason"), 30)
    condition = ready(cluster, namespace, "pinned")
    assert (condition["status"], condition["reason"]) == ("False", "SourceHashMismatch")
    assert condition["message"] == f"expected sha256 {wrong}, got {actual}"
    assert program_versions(cluster, namespace, "pinned") == {}

    # The right pin: the program reaches the node.
    apply(cluster, namespace, "pinned", {**source, "sha256": actual})
    wait_for("the pinned version on the node", lambda: served_source(cluster, namespace, "pinned"), 30)
    assert (served_source(cluster, namespace, "pinned") or {})["sha256"] == actual


def test_an_object_that_is_not_a_bpf_elf_is_invalid(cluster: Kube, namespace: str):
    put_elf(cluster, namespace, "progs", bpf_object(machine=62), create=True)
    apply(cluster, namespace, "x86", {"bytecode": {"configMapRef": {"name": "progs", "key": "prog.bpf.o"}}})
    wait_for("the refusal in status", lambda: ready(cluster, namespace, "x86").get("reason"), 30)
    condition = ready(cluster, namespace, "x86")
    assert condition["reason"] == "InvalidSpec"
    assert "for machine 62, not BPF (247)" in condition["message"]
    assert program_versions(cluster, namespace, "x86") == {}


def test_the_largest_object_fits_the_config_map_and_the_version(cluster: Kube, namespace: str):
    largest = bpf_object(bytes(MAX_ELF_BYTES - 64))
    assert len(largest) == MAX_ELF_BYTES
    put_elf(cluster, namespace, "progs", largest, create=True)
    apply(cluster, namespace, "large", {"bytecode": {"configMapRef": {"name": "progs", "key": "prog.bpf.o"}}})
    wait_for("the largest object on the node", lambda: served_source(cluster, namespace, "large"), 30)
    assert (served_source(cluster, namespace, "large") or {})["sha256"] == hashlib.sha256(largest).hexdigest()
