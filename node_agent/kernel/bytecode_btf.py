"""What an object's BTF says: a map's key and value types as text (its layout), the `.rodata`
globals parameters set, and the `.kconfig` externs. Reads libbpf's parsed BTF.

The text of a type names every member, its offset and its type down to the integers, so that a
changed struct is a new layout (map_reuse) even when its size is the same.
"""

from __future__ import annotations

from dataclasses import dataclass

from node_agent.kernel import libbpf as lb

_MAX_DEPTH = 8  # structs nested deeper than this are described by name and size only
_QUALIFIERS = {lb.BTF_KIND_TYPEDEF, lb.BTF_KIND_VOLATILE, lb.BTF_KIND_CONST, lb.BTF_KIND_RESTRICT}
_QUALIFIERS |= {lb.BTF_KIND_TYPE_TAG}
# Externs libbpf fills in from the kernel's configuration (LINUX_KERNEL_VERSION, CONFIG_*).
KCONFIG_SECTION = ".kconfig"


def describe(btf: int, type_id: int, depth: int = 0) -> str:
    """A type as text (type id 0, no BTF: "")."""
    if not btf or not type_id:
        return ""
    t = lb.btf_type(btf, type_id)
    if t is None:
        return f"?{type_id}"
    if t.kind == lb.BTF_KIND_TYPEDEF:
        return f"{t.name}={describe(btf, t.size_or_type, depth)}"
    if t.kind in _QUALIFIERS:
        return describe(btf, t.size_or_type, depth)
    if t.kind == lb.BTF_KIND_INT:
        return f"int{t.size_or_type}:{t.extra[0]:#x}"
    if t.kind == lb.BTF_KIND_PTR:
        return "ptr"  # what it points to is the kernel's business, never the map's contents
    if t.kind == lb.BTF_KIND_ARRAY:
        element, _index, count = t.extra
        return f"[{count}]{describe(btf, element, depth)}"
    if t.kind in (lb.BTF_KIND_STRUCT, lb.BTF_KIND_UNION):
        head = f"{'struct' if t.kind == lb.BTF_KIND_STRUCT else 'union'} {t.name}/{t.size_or_type}"
        if depth >= _MAX_DEPTH:
            return head
        members = []
        for i in range(t.vlen):
            name_off, member_type, offset = t.extra[3 * i : 3 * i + 3]
            members.append(f"{lb.name_at(btf, name_off)}@{offset}:{describe(btf, member_type, depth + 1)}")
        return f"{head}{{{','.join(members)}}}"
    if t.kind in (lb.BTF_KIND_ENUM, lb.BTF_KIND_ENUM64):
        return f"enum {t.name}/{t.size_or_type}"
    return f"kind{t.kind} {t.name}/{t.size_or_type}"


@dataclass(frozen=True)
class Global:
    """A global variable of a data section: where it is, and what it holds."""

    name: str
    offset: int
    size: int
    kind: str  # "int", "char[]" or "other"
    signed: bool = False


def section_globals(btf: int, section: str) -> dict[str, Global]:
    """The variables of the BTF data section `section` (".rodata"), by name."""
    found: dict[str, Global] = {}
    for t in _datasecs(btf, section):
        for i in range(t.vlen):
            var_id, offset, size = t.extra[3 * i : 3 * i + 3]
            var = lb.btf_type(btf, var_id)
            if var is None or var.kind != lb.BTF_KIND_VAR:
                continue
            found[var.name] = _global(btf, var.name, var.size_or_type, offset, size)
    return found


def _datasecs(btf: int, section: str) -> list[lb.TypeInfo]:
    if not btf:
        return []
    found = []
    for type_id in range(1, lb.lib().btf__type_cnt(btf)):
        t = lb.btf_type(btf, type_id)
        if t is not None and t.kind == lb.BTF_KIND_DATASEC and t.name == section:
            found.append(t)
    return found


def _global(btf: int, name: str, type_id: int, offset: int, size: int) -> Global:
    t = _resolved(btf, type_id)
    if t is not None and t.kind == lb.BTF_KIND_INT and size in (1, 2, 4, 8):
        return Global(name, offset, size, "int", signed=bool((t.extra[0] >> 24) & lb.BTF_INT_SIGNED))
    if t is not None and t.kind == lb.BTF_KIND_ARRAY:
        element = _resolved(btf, t.extra[0])
        if element is not None and element.kind == lb.BTF_KIND_INT and element.size_or_type == 1:
            return Global(name, offset, size, "char[]")
    return Global(name, offset, size, "other")


def _resolved(btf: int, type_id: int) -> lb.TypeInfo | None:
    """The type behind typedefs and qualifiers."""
    for _ in range(32):
        t = lb.btf_type(btf, type_id)
        if t is None or t.kind not in _QUALIFIERS:
            return t
        type_id = t.size_or_type
    return None
