"""Parameters of a bytecode program: values for its `const volatile` globals in `.rodata`.

A C program's parameters are -D defines; an object is compiled already, so its knobs are read-only
globals the loader fills in before the verifier sees them (the verifier then knows their values,
and prunes by them). Only integers of 1, 2, 4 or 8 bytes and char arrays take a value; a name the
object has no such global for is refused, never ignored.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping

from node_agent.kernel.built import BuildFailure
from node_agent.kernel.bytecode_btf import Global

RODATA = ".rodata"


def apply(data: bytes, variables: Mapping[str, Global], parameters: Mapping[str, int | str]) -> bytes:
    """The section's bytes with each parameter written into its global; raises BuildFailure."""
    out = bytearray(data)
    for name, value in sorted(parameters.items()):
        var = variables.get(name)
        if var is None:
            known = ", ".join(sorted(n for n, v in variables.items() if v.kind != "other")) or "none"
            raise BuildFailure(
                "CompileError",
                f"parameter {name}: the object has no `const volatile` global {name} in {RODATA}"
                f" (its parameters: {known})",
            )
        if var.offset + var.size > len(out):
            raise BuildFailure("CompileError", f"parameter {name}: its global lies outside {RODATA}")
        out[var.offset : var.offset + var.size] = encode(var, value)
    return bytes(out)


def encode(var: Global, value: int | str) -> bytes:
    if var.kind == "int":
        if isinstance(value, str):
            raise BuildFailure("CompileError", f"parameter {var.name}: an integer global takes no string")
        low, high = (
            (-(1 << (8 * var.size - 1)), 1 << (8 * var.size - 1)) if var.signed else (0, 1 << (8 * var.size))
        )
        if not low <= int(value) < high:
            raise BuildFailure(
                "CompileError",
                f"parameter {var.name}: {value} does not fit its {'signed' if var.signed else 'unsigned'}"
                f" {8 * var.size}-bit global",
            )
        return int(value).to_bytes(var.size, sys.byteorder, signed=var.signed)
    if var.kind == "char[]":
        if not isinstance(value, str):
            raise BuildFailure("CompileError", f"parameter {var.name}: a char array takes a string")
        raw = value.encode()
        if len(raw) >= var.size:
            raise BuildFailure(
                "CompileError", f"parameter {var.name}: {len(raw)} bytes do not fit its char[{var.size}]"
            )
        return raw.ljust(var.size, b"\0")
    raise BuildFailure(
        "CompileError", f"parameter {var.name}: only integer and char array globals take parameters"
    )


def from_defines(defines: tuple[tuple[str, str], ...]) -> dict[str, int | str]:
    """The typed values back from a build's defines (ints as digits, strings as JSON literals)."""
    values: dict[str, int | str] = {}
    for name, text in defines:
        values[name] = str(json.loads(text)) if text.startswith('"') else int(text)
    return values
