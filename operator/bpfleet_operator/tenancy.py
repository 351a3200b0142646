"""What a program may reach, by its kind. Pure: no API calls.

The API server's rules (crds/) refuse most of this already; the operator checks the part that keeps
tenants in their namespace again, so that an older CRD or a relaxed one cannot widen what they reach.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from bpfleet_api import names, selectors
from bpfleet_operator.kinds import ProgramKind

RESERVED_FUNCTION_PREFIX = "bpfleet_"
_INT64_MAX = 2**63 - 1  # the version object's maxMapBytes is an int64


@dataclass(frozen=True)
class NamespaceInfo:
    labels: Mapping[str, str] = field(default_factory=dict)
    annotations: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Reach:
    """What a program's version objects carry beyond its own spec."""

    namespaces: tuple[str, ...] | None = None  # ClusterEbpfProgram with scope Pods
    max_map_bytes: int | None = None  # None: the agent's default
    notes: tuple[str, ...] = ()  # what the user should know (a bad annotation), not failures


def problems(kind: ProgramKind, spec: Mapping[str, Any]) -> list[str]:
    """What in a spec its kind may not do, in the words of the CRD's messages."""
    found = []
    attach = spec.get("attach") or {}
    if str(spec.get("function", "")).startswith(RESERVED_FUNCTION_PREFIX):
        found.append("function names starting with bpfleet_ are reserved for the agent")
    if kind.namespaced:
        if attach.get("side") == "Host":
            found.append(
                "attach.side Host reaches the node's side of the pod network: use a ClusterEbpfProgram"
            )
        if attach.get("type") in ("Kprobe", "Kretprobe"):
            found.append(
                "types Kprobe and Kretprobe trace the whole node's kernel, not only this namespace's "
                "pods: use a ClusterEbpfProgram"
            )
    else:
        source = spec.get("source") or {}
        ref = source.get("configMapRef") or (source.get("bytecode") or {}).get("configMapRef")
        if ref and ref.get("namespace", names.system_namespace()) != names.system_namespace():
            found.append(
                f"a ClusterEbpfProgram reads a configMapRef source only from the bpfleet system namespace "
                f"({names.system_namespace()}): whoever may write ConfigMaps in {ref.get('namespace')} "
                "would write the code it runs on every node"
            )
    return found


def scope(kind: ProgramKind, spec: Mapping[str, Any]) -> str:
    """A tenant's program reaches pods only, whatever its spec says."""
    if kind.namespaced:
        return names.SCOPE_PODS
    return spec.get("scope") or names.SCOPE_PODS


def selected_namespaces(
    selector: Mapping[str, Any] | None, namespaces: Mapping[str, NamespaceInfo]
) -> tuple[str, ...]:
    """The namespaces whose labels the selector matches (absent or {}: every namespace), sorted."""
    return tuple(sorted(name for name, ns in namespaces.items() if selectors.matches(selector, ns.labels)))


def annotated_max_map_bytes(namespace: str, info: NamespaceInfo | None) -> tuple[int | None, str | None]:
    """The namespace's bpfleet.io/max-map-bytes as (bytes, None), or (None, why it is ignored)."""
    raw = (info.annotations if info else {}).get(names.MAX_MAP_BYTES_ANNOTATION)
    if raw is None:
        return None, None
    text = raw.strip()
    if text.isascii() and text.isdigit() and 0 < int(text) <= _INT64_MAX:
        return int(text), None
    return None, (
        f"namespace {namespace} has annotation {names.MAX_MAP_BYTES_ANNOTATION}={raw[:64]!r}, which is "
        "not a positive integer number of bytes: the agent's default cap applies"
    )


def reach(
    kind: ProgramKind, namespace: str, spec: Mapping[str, Any], namespaces: Mapping[str, NamespaceInfo]
) -> Reach:
    """`namespace`: the program's own ("" for a ClusterEbpfProgram); `namespaces`: every Namespace."""
    if kind.namespaced:
        max_bytes, note = annotated_max_map_bytes(namespace, namespaces.get(namespace))
        return Reach(max_map_bytes=max_bytes, notes=(note,) if note else ())
    selected = None
    if scope(kind, spec) == names.SCOPE_PODS:
        selected = selected_namespaces(spec.get("namespaceSelector"), namespaces)
    return Reach(namespaces=selected, max_map_bytes=spec.get("maxMapBytes"))
