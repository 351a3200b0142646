"""Node-object names and label values: collision-free, always valid, stable (the shared contract)."""

from __future__ import annotations

import hashlib
import re

import pytest

from bpfleet_api import names

DNS_1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
LONG = "a" * 200 + ".b-" + "c" * 50  # 253 characters, a valid DNS subdomain
assert len(LONG) == 253


def test_the_name_is_the_readable_pair_then_the_hash_of_the_whole_identity():
    digest = hashlib.sha256(b"EbpfProgram/shop/web.counter/node-1.zone").hexdigest()[:10]
    assert names.node_program_name("EbpfProgram", "shop", "web.counter", "node-1.zone") == (
        f"web-counter-node-1-zone-{digest}"
    )


def test_pairs_that_join_to_the_same_text_get_different_names():
    # "a-b" on node "c" and "a" on node "b-c": both were "a-b-c", so one was never served.
    first = names.node_program_name(names.PROGRAM_KIND, "shop", "a-b", "c")
    second = names.node_program_name(names.PROGRAM_KIND, "shop", "a", "b-c")
    assert first != second
    assert first.startswith("a-b-c-") and second.startswith("a-b-c-")


def test_kinds_and_namespaces_get_different_names():
    found = {
        names.node_program_name(names.PROGRAM_KIND, "shop", "p", "n"),
        names.node_program_name(names.PROGRAM_KIND, "other", "p", "n"),
        names.node_program_name(names.CLUSTER_PROGRAM_KIND, "", "p", "n"),
    }
    assert len(found) == 3


@pytest.mark.parametrize(
    ("program", "node"),
    [
        (LONG, LONG),
        (LONG, "n"),
        ("p", LONG),
        ("p" * 51 + ".x", "node"),  # the cut falls after a dot, which becomes a dash
        ("a" * 51 + "-" + "b", "c"),  # the cut falls on a dash
        ("web", "node.example.com"),
        ("0", "1"),
    ],
)
def test_names_are_dns_1123_labels(program: str, node: str):
    for kind, namespace in ((names.PROGRAM_KIND, "shop"), (names.CLUSTER_PROGRAM_KIND, "")):
        name = names.node_program_name(kind, namespace, program, node)
        assert len(name) <= 63
        assert DNS_1123_LABEL.match(name), name


def test_long_names_stay_distinct_and_stable():
    a = names.node_program_name(names.PROGRAM_KIND, "shop", LONG, LONG)
    b = names.node_program_name(names.PROGRAM_KIND, "shop", LONG, LONG[:-1] + "d")
    assert a != b
    assert a == names.node_program_name(names.PROGRAM_KIND, "shop", LONG, LONG)


def test_label_values_are_the_name_when_short_and_valid_and_distinct_when_long():
    assert names.label_value("node-a") == "node-a"
    assert names.label_value("x" * 63) == "x" * 63
    digest = hashlib.sha256(LONG.encode()).hexdigest()[:10]
    assert names.label_value(LONG) == f"{LONG[:52]}-{digest}"
    assert names.label_value(LONG) != names.label_value(LONG[:-1] + "d")
    for value in (LONG, "a" * 51 + ".." + "b" * 20, "a" * 51 + "-_" + "b" * 20, "x" * 64):
        label = names.label_value(value)
        assert len(label) <= 63 and LABEL_VALUE.match(label), label
        assert label == names.label_value(value)


def test_system_namespace_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv(names.SYSTEM_NAMESPACE_ENV, raising=False)
    assert names.system_namespace() == "bpfleet-system"
    monkeypatch.setenv(names.SYSTEM_NAMESPACE_ENV, "infra")
    assert names.system_namespace() == "infra"
