"""The two program kinds, as one descriptor each, so that one code path reconciles both."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

from bpfleet_api import names


class ProgramKey(NamedTuple):
    """One program: its kind, namespace ("" for a ClusterEbpfProgram) and name."""

    kind: str
    namespace: str
    name: str


@dataclass(frozen=True)
class ProgramKind:
    kind: str
    plural: str
    namespaced: bool
    label: str  # the label of its versions that names the program (label_value of the name)

    def key(self, namespace: str | None, name: str) -> ProgramKey:
        return ProgramKey(self.kind, (namespace or "") if self.namespaced else "", name)

    def node_namespace(self, key: ProgramKey) -> str:
        """Where its versions live: the program's namespace, or the bpfleet system namespace."""
        return key.namespace if self.namespaced else names.system_namespace()

    def api_namespace(self, key: ProgramKey) -> str | None:
        """The program's own namespace for API calls; None for a cluster-scoped program."""
        return key.namespace if self.namespaced else None

    def config_map_namespace(self, key: ProgramKey, spec: Mapping[str, Any]) -> str:
        """Where a configMapRef source is read: a tenant's own namespace whatever the spec says; for a
        cluster admin's program the namespace it names, which tenancy.problems allows to be the
        system namespace only."""
        if self.namespaced:
            return key.namespace
        source = spec.get("source") or {}
        ref = source.get("configMapRef") or (source.get("bytecode") or {}).get("configMapRef") or {}
        return str(ref.get("namespace") or names.system_namespace())


NAMESPACED = ProgramKind(names.PROGRAM_KIND, names.PROGRAM_PLURAL, True, names.PROGRAM_LABEL)
CLUSTER = ProgramKind(
    names.CLUSTER_PROGRAM_KIND, names.CLUSTER_PROGRAM_PLURAL, False, names.CLUSTER_PROGRAM_LABEL
)
ALL = (NAMESPACED, CLUSTER)
_BY_KIND = {k.kind: k for k in ALL}
_BY_PLURAL = {k.plural: k for k in ALL}


def of(key: ProgramKey) -> ProgramKind:
    return _BY_KIND[key.kind]


def by_plural(plural: str) -> ProgramKind:
    return _BY_PLURAL[plural]
