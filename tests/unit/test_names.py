"""Version names and label values: collision-free, always valid, stable (the shared contract)."""

from __future__ import annotations

import hashlib
import re

import pytest

from bpfleet_api import names

DNS_1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
LONG = "a" * 200 + ".b-" + "c" * 50  # 253 characters, a valid DNS subdomain
assert len(LONG) == 253


HASH = hashlib.sha256(b"content").hexdigest()
OTHER_HASH = hashlib.sha256(b"other content").hexdigest()


def test_a_version_name_is_the_readable_program_then_ten_hex_of_its_content_hash():
    name = names.version_name(names.PROGRAM_KIND, "shop", "web.counter", HASH)
    assert name == f"web-counter-{HASH[:10]}"


def test_versions_of_one_program_with_other_content_get_other_names():
    assert names.version_name(names.PROGRAM_KIND, "shop", "p", HASH) != names.version_name(
        names.PROGRAM_KIND, "shop", "p", OTHER_HASH
    )


@pytest.mark.parametrize(
    "program",
    [
        LONG,
        "p" * 51 + ".x",  # the cut falls after a dot, which becomes a dash
        "a" * 52 + "-" + "b",  # the cut falls on a dash
        "web.example.com",
        "0",
    ],
)
def test_version_names_are_dns_1123_labels(program: str):
    for kind, namespace in ((names.PROGRAM_KIND, "shop"), (names.CLUSTER_PROGRAM_KIND, "")):
        name = names.version_name(kind, namespace, program, HASH)
        assert len(name) <= 63
        assert DNS_1123_LABEL.match(name), name
        assert name.endswith(HASH[:10])


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
