"""The layout digest that decides whether a map carries over to a program's next version (pure)."""

from __future__ import annotations

import dataclasses

import pytest

from node_agent.kernel import map_reuse
from node_agent.kernel.syscalls import MapInfo

TRAFFIC = MapInfo(id=7, type=1, key_size=8, value_size=16, max_entries=10240, name="traffic", flags=0)
KEY, LEAF = '"unsigned long long"', '["traffic_counts", [["packets","unsigned long long"]], "struct_packed"]'


def test_the_same_layout_has_the_same_digest_whatever_the_map_id():
    again = dataclasses.replace(TRAFFIC, id=99)
    assert map_reuse.digest(again, KEY, LEAF) == map_reuse.digest(TRAFFIC, KEY, LEAF)
    assert map_reuse.is_digest(map_reuse.digest(TRAFFIC, KEY, LEAF))


@pytest.mark.parametrize(
    "change",
    [
        {"name": "traffic2"},
        {"type": 9},
        {"key_size": 4},
        {"value_size": 24},
        {"max_entries": 4096},
        {"flags": 1},
    ],
)
def test_any_kernel_figure_changes_the_digest(change):
    assert map_reuse.digest(dataclasses.replace(TRAFFIC, **change), KEY, LEAF) != map_reuse.digest(
        TRAFFIC, KEY, LEAF
    )


def test_the_key_and_value_types_change_the_digest():
    base = map_reuse.digest(TRAFFIC, KEY, LEAF)
    assert map_reuse.digest(TRAFFIC, '"unsigned int"', LEAF) != base
    assert map_reuse.digest(TRAFFIC, KEY, LEAF.replace("packets", "bytes")) != base


@pytest.mark.parametrize(
    ("info", "reusable"),
    [
        (TRAFFIC, True),
        (dataclasses.replace(TRAFFIC, type=2), True),
        (dataclasses.replace(TRAFFIC, type=3, name="jumps"), False),  # program array
        (dataclasses.replace(TRAFFIC, type=4, name="events"), False),  # perf event array
        (dataclasses.replace(TRAFFIC, type=27, name="ring"), False),  # ring buffer
        (dataclasses.replace(TRAFFIC, name="bpfleet_pods"), False),  # the agent's own
        (dataclasses.replace(TRAFFIC, name="BPFLEET_pods"), False),
    ],
)
def test_only_data_maps_of_the_users_own_carry_over(info, reusable):
    assert map_reuse.reusable(info) is reusable


def test_layout_pins_are_read_back_and_other_names_ignored(tmp_path):
    digest = "ab" * 32
    (tmp_path / "layouts").mkdir()
    for name in (f"traffic-{digest}", "junk", f"../x-{digest}", f"toolongname_0123456789-{digest}", "a-b"):
        (tmp_path / "layouts" / name.replace("/", "_")).touch()
    assert map_reuse.pinned_layouts(tmp_path) == {"traffic": digest}
    assert map_reuse.pinned_layouts(tmp_path / "missing") == {}
