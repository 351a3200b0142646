"""The operator's memory of what kopf's watches delivered: programs until deleted, and the
ConfigMaps programs name, where a GET's answer never overwrites a newer watch event."""

from __future__ import annotations

from typing import Any

from bpfleet_operator.kinds import NAMESPACED
from bpfleet_operator.watched import ConfigMapBodies, ProgramBodies


def config_map(version: str) -> dict[str, Any]:
    return {"metadata": {"name": "src", "resourceVersion": version}, "data": {"prog.c": version}}


def test_a_program_is_kept_until_deleted():
    bodies, key = ProgramBodies(), NAMESPACED.key("shop", "counter")
    bodies.observed(key, {"metadata": {"generation": 1}})
    bodies.observed(key, {"metadata": {"generation": 2}})
    assert bodies.get(key) == {"metadata": {"generation": 2}}
    bodies.observed(key, None)
    assert bodies.get(key) is None


def test_only_named_config_maps_are_kept_and_read_once():
    gets: list[tuple[str, str]] = []

    def get(namespace: str, name: str) -> dict[str, Any] | None:
        gets.append((namespace, name))
        return config_map("1")

    bodies = ConfigMapBodies(get)
    bodies.observed("shop", "other", config_map("9"))  # named by no program: not kept
    bodies.name({("shop", "src")})
    assert bodies.read("shop", "src") == config_map("1")
    assert bodies.read("shop", "src") == config_map("1")
    assert gets == [("shop", "src")]
    bodies.observed("shop", "src", config_map("2"))  # an edit
    assert bodies.read("shop", "src") == config_map("2")
    bodies.observed("shop", "src", None)  # deleted
    assert bodies.read("shop", "src") is None and gets == [("shop", "src")]
    bodies.name(set())  # no program names it any more
    bodies.read("shop", "src")
    assert len(gets) == 2
    assert bodies.read("shop", "other") == config_map("1")  # read, never kept: not named


def test_a_get_answer_older_than_an_event_is_not_kept():
    bodies = ConfigMapBodies(lambda namespace, name: None)
    bodies.name({("shop", "src")})

    def get_while_an_edit_arrives(namespace: str, name: str) -> dict[str, Any]:
        bodies.observed(namespace, name, config_map("2"))  # the watch delivers meanwhile
        return config_map("1")

    bodies._get = get_while_an_edit_arrives
    assert bodies.read("shop", "src") == config_map("1")  # this reconcile's answer
    assert bodies.read("shop", "src") == config_map("2")  # the next reads the watch's
