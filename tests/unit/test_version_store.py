"""Which versions each program has, from one metadata LIST at start: by the controller owner the
operator set (exact, where a long name's label is a hash), and listed once, not once per program."""

from __future__ import annotations

from typing import Any

from bpfleet_api import names
from bpfleet_operator.kinds import CLUSTER, NAMESPACED
from bpfleet_operator.version_store import VersionStore, owner_key


def meta(name: str, namespace: str, kind: str, owner: str, controller: bool = True) -> dict[str, Any]:
    ref = {"apiVersion": names.API_VERSION, "kind": kind, "name": owner, "uid": "u", "controller": controller}
    return {"name": name, "namespace": namespace, "ownerReferences": [ref]}


class DeletingCustom:
    def __init__(self) -> None:
        self.deleted: list[tuple[str, str]] = []

    def delete_namespaced_custom_object(self, *args: Any) -> None:
        self.deleted.append((args[2], args[4]))


def test_a_version_belongs_to_its_controller_owner_only():
    assert owner_key(meta("v", "shop", names.PROGRAM_KIND, "counter")) == NAMESPACED.key("shop", "counter")
    assert owner_key(meta("v", "bpfleet-system", names.CLUSTER_PROGRAM_KIND, "audit")) == CLUSTER.key(
        None, "audit"
    )
    assert owner_key(meta("v", "shop", names.PROGRAM_KIND, "counter", controller=False)) is None
    assert owner_key(meta("v", "shop", "ConfigMap", "counter")) is None
    assert owner_key({"name": "v", "namespace": "shop"}) is None


def test_versions_are_listed_once_for_every_program_and_old_ones_collected():
    lists = []
    listed = [
        meta("counter-1", "shop", names.PROGRAM_KIND, "counter"),
        meta("counter-2", "shop", names.PROGRAM_KIND, "counter"),
        meta("other-1", "shop", names.PROGRAM_KIND, "other"),
        meta("stray", "elsewhere", names.CLUSTER_PROGRAM_KIND, "audit"),  # not where its kind lives
    ]

    def list_versions() -> list[dict[str, Any]]:
        lists.append(1)
        return listed

    custom = DeletingCustom()
    store = VersionStore(custom, list_versions)  # type: ignore[arg-type]
    store.collect(NAMESPACED.key("shop", "counter"), keep={"counter-2"})
    store.collect(NAMESPACED.key("shop", "other"), keep={"other-1"})
    store.collect(NAMESPACED.key("shop", "new"), keep=set())  # made after the start: none to collect
    store.collect(CLUSTER.key(None, "audit"), keep=set())
    assert custom.deleted == [("shop", "counter-1")]
    assert lists == [1]
