"""Which binds and symlinks show a set of paths in the compile sandbox (pure path logic on a temp tree)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from node_agent.errors import SandboxError
from node_agent.kernel import sandbox_root


def test_symlinks_on_the_way_are_recreated_and_their_targets_bound(tmp_path: Path):
    real = tmp_path / "usr" / "src" / "headers"
    (real / "include").mkdir(parents=True)
    (tmp_path / "lib").symlink_to("usr")  # relative, like /lib -> usr/lib
    (real.parent / "build").symlink_to(real)  # absolute, like build -> /usr/src/linux-headers-...
    plan = sandbox_root.plan([str(tmp_path / "lib" / "src" / "build" / "include")])

    assert plan.trees() == [str(real / "include")]
    assert plan.symlinks() == {str(tmp_path / "lib"): "usr", str(real.parent / "build"): str(real)}


def test_trees_inside_a_bound_tree_and_absent_paths_are_left_out(tmp_path: Path):
    (tmp_path / "a" / "b").mkdir(parents=True)
    (tmp_path / "a" / "f").write_text("")
    plan = sandbox_root.plan([str(tmp_path / "a" / "b"), str(tmp_path / "a"), str(tmp_path / "gone")])
    assert plan.trees() == [str(tmp_path / "a")]
    assert sandbox_root.plan([str(tmp_path / "a" / "f")]).binds == {str(tmp_path / "a" / "f"): False}


def test_a_symlink_loop_is_a_sandbox_error(tmp_path: Path):
    os.symlink("b", tmp_path / "a")
    os.symlink("a", tmp_path / "b")
    (tmp_path / "c").mkdir()
    plan = sandbox_root.RootPlan()
    with pytest.raises(SandboxError, match="too many symlinks"):
        sandbox_root._follow(str(tmp_path / "a" / "x"), plan.links)


def test_the_root_is_built_on_a_directory_no_shown_tree_is_under():
    shown = sandbox_root.RootPlan(binds={"/mnt/include": True, "/usr/lib": True})
    assert sandbox_root.mountpoint(shown) != "/mnt"
    assert sandbox_root.mountpoint(sandbox_root.RootPlan(binds={"/usr/lib": True})) == "/mnt"
