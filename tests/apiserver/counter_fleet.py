"""Fixtures of the operator suites that roll one program, "counter", over a few played nodes
(test_rollout_operator.py, test_placements_operator.py): the operator, a namespace per test, and
Nodes with their agents. A module using them sets NODE_LABEL (the label its Nodes carry) and RUN."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
from kubernetes.client import V1Node, V1ObjectMeta

from e2e.harness import ManagedProcess, wait_for
from e2e.kube import Kube
from tests.apiserver.operator_support import (
    agent_removed,
    agent_starts,
    delete_quietly,
    namespace_for_a_test,
    node_state,
    operator_running,
)


def _short(request: pytest.FixtureRequest) -> str:
    return request.module.__name__.rsplit(".", 1)[-1].removeprefix("test_").removesuffix("_operator")


@pytest.fixture(scope="module")
def operator(
    kube: Kube, tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> Iterator[ManagedProcess]:
    with operator_running(kube, tmp_path_factory.mktemp(f"{_short(request)}-operator")) as process:
        yield process


@pytest.fixture
def namespace(kube: Kube, operator: ManagedProcess, request: pytest.FixtureRequest) -> Iterator[str]:
    with namespace_for_a_test(kube, _short(request)) as name:
        yield name


@pytest.fixture
def fleet(kube: Kube, request: pytest.FixtureRequest) -> Iterator[Callable[..., list[str]]]:
    """make(prefix, count, label, canary=index, reads_placements=True): Nodes labelled
    NODE_LABEL=label (the canary-th also canary=yes), each with an agent and its node state."""
    made: list[str] = []
    label_key, run = request.module.NODE_LABEL, request.module.RUN

    def make(
        prefix: str, count: int, label: str, canary: int | None = None, reads_placements: bool = True
    ) -> list[str]:
        for i in range(count):
            node = f"{prefix}-{run}-{i}"
            labels = {label_key: label, **({"canary": "yes"} if i == canary else {})}
            kube.core.create_node(V1Node(metadata=V1ObjectMeta(name=node, labels=labels)))
            made.append(node)
            agent_starts(kube, node, reads_placements=reads_placements)
        wait_for("a node state per node", lambda: all(node_state(kube, n) for n in made[-count:]), 10)
        return made[-count:]

    yield make
    for node in made:
        delete_quietly(lambda node=node: kube.core.delete_node(node))
        agent_removed(kube, node)
