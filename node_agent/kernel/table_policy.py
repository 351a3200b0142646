"""Which tables a user source may declare: its own, private ones only.

BCC reads a table's kind from the section of its variable ("maps/<kind>"), however the source
spelled it (BPF_TABLE_PINNED and friends, or a raw __attribute__((section(...))) built by any
macro). Four kinds reach outside the program:

    maps/<kind>:<path>   pinned: opens the object pinned at <path>, or pins a new map there
    maps/extern          a table of another program in the same process
    maps/export          BPF_TABLE_PUBLIC: offered to every other program of the process
    maps/shared          BPF_TABLE_SHARED: offered to the programs of a maps namespace

bpfleet pins what it loads itself, so none is allowed. Two checks find them whatever the spelling:
the compiled module's own sections (its LLVM IR, where the macros are gone), and the traces BCC
leaves when it tries to reach a pin, which the compile guard makes fail (a pinned table that the
code uses fails the compile before any IR exists).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_SHARING_KINDS = {"extern": "extern", "export": "public", "shared": "shared"}
# BCC's own messages when a pinned table could not reach its pin (the guard denies every attempt).
_PIN_ATTEMPTS = (
    re.compile(r"^failed to mkdir (?P<path>.+): [^:]+$", re.M),
    re.compile(r"^failed to statfs (?P<path>.+): [^:]+$", re.M),
    re.compile(r"^specified path (?P<path>.+) is not on BPF FS$", re.M),
    re.compile(r"^failed to pin map: (?P<path>.+), error: .+$", re.M),
)
_UNOPENED_TABLE = re.compile(r"error: bpf_table (?P<name>\w+) failed to open")
_UNDEFINED_TABLE = re.compile(r"error: reference to undefined table")
_GLOBAL = re.compile(r'^@(?P<name>[-\w.$]+|"[^"]*") = ')


@dataclass(frozen=True)
class Refusal:
    table: str  # "" when BCC's output does not say which table it was
    what: str  # "pinned at /x", "extern", "public" or "shared"

    def describe(self) -> str:
        return f"table {self.table} is {self.what}" if self.table else f"a table is {self.what}"


def _quoted_strings(line: str) -> list[tuple[str, str]]:
    """(text before, contents) of each quoted string of an IR line. IR escapes a quote inside a
    string as \\22, so quotes pair up in order."""
    found: list[tuple[str, str]] = []
    pos = 0
    while (start := line.find('"', pos)) != -1:
        end = line.find('"', start + 1)
        if end == -1:
            break
        found.append((line[pos:start], line[start + 1 : end]))
        pos = end + 1
    return found


def _unescape(ir_string: str) -> str:
    return re.sub(r"\\([0-9A-Fa-f]{2})", lambda m: chr(int(m.group(1), 16)), ir_string)


def _section_refusal(name: str, section: str) -> Refusal | None:
    if not section.startswith("maps/"):
        return None
    kind, colon, path = section[len("maps/") :].partition(":")
    if colon:
        return Refusal(name, f"pinned at {path}")
    if kind in _SHARING_KINDS:
        # BPF_TABLE_PUBLIC and _SHARED export the table through a second variable "__<name>".
        table = name[2:] if kind != "extern" and name.startswith("__") else name
        return Refusal(table, _SHARING_KINDS[kind])
    return None


def refusals_in_ir(ir: str) -> list[Refusal]:
    """The tables of a compiled module that reach outside the program, from its global variables."""
    refusals: list[Refusal] = []
    for line in ir.splitlines():
        match = _GLOBAL.match(line)
        if not match:
            continue
        for before, contents in _quoted_strings(line):
            if before.endswith(", section "):
                refusal = _section_refusal(match["name"].strip('"'), _unescape(contents))
                if refusal is not None and refusal not in refusals:
                    refusals.append(refusal)
    return refusals


def refusals_in_output(output: str) -> list[Refusal]:
    """Tables BCC tried and failed to reach outside the program, from what it printed."""
    paths = [m["path"] for pattern in _PIN_ATTEMPTS for m in pattern.finditer(output)]
    names = list(dict.fromkeys(m["name"] for m in _UNOPENED_TABLE.finditer(output)))
    refusals: list[Refusal] = []
    if paths:
        where = f"pinned at {paths[0]}"
        refusals = [Refusal(name, where) for name in names] or [Refusal("", where)]
    elif _UNDEFINED_TABLE.search(output):
        refusals = [Refusal(name, "extern") for name in names] or [Refusal("", "extern")]
    return refusals


def message(refusals: list[Refusal]) -> str:
    said = "; ".join(r.describe() for r in refusals)
    return (
        f"{said}: a program's tables must be its own (no pinned, extern, public or shared tables; "
        "bpfleet pins the program's maps itself)"
    )
