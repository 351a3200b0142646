"""What of the compiler's output a user may read: the diagnostics of their own program.c only.

A source can #include any file the compile can open, and clang quotes the lines it complains
about, so the output of a compile could show a node's files to a tenant. Diagnostics located in
any other file (headers of the node, the agent's prelude, clang's scratch buffers) become one line
that says a diagnostic was elided, without their path, text or source lines; where one of the
user's lines included such a file, that line is named. Paths outside the program are never shown.
"""

from __future__ import annotations

import re

USER_FILE_NAME = "program.c"
BCC_MAIN_FILE = "/virtual/main.c"  # how BCC names the text it compiles
OUTSIDE = "<a file outside the program>"

# file:line[:col]: kind: message  (clang's diagnostic header)
_HEADER = re.compile(
    r"^(?P<file>.+?):(?P<line>\d+):(?:\d+:)? (?P<kind>fatal error|error|warning|note|remark): "
)
# "In file included from file:line:" and its continuation lines "                 from file:line:"
_INCLUDED = re.compile(r"^(?:In file included from|\s+from) (?P<file>.+?):(?P<line>\d+)[:,]$")
_SUMMARY = re.compile(r"^\d+ (?:warnings?|errors?)( and \d+ (?:warnings?|errors?))? generated\.$")
_UNLOCATED = re.compile(r"^(?:fatal error|error|warning): ")
_PATH = re.compile(r"(?<![\w.])/[^\s:'\"()]+")


def _mask_paths(line: str) -> str:
    return _PATH.sub(OUTSIDE, line)


def user_diagnostics(output: str, main_is_user: bool = False) -> str:
    """The compiler output with everything located outside program.c elided. `main_is_user`: BCC's
    main file is the user's text alone (no prelude before it), so it is program.c too."""
    user_files = {USER_FILE_NAME, BCC_MAIN_FILE} if main_is_user else {USER_FILE_NAME}
    kept: list[str] = []
    keeping = False  # whether the lines now read belong to a diagnostic of the user's file
    for line in output.splitlines():
        if line.startswith("; ModuleID"):
            break  # an IR dump follows: not for users
        header = _HEADER.match(line)
        if header:
            keeping = header["file"] in user_files
            if keeping:
                kept.append(USER_FILE_NAME + line[len(header["file"]) :])
            elif header["kind"] != "note":  # an elided note explains an elided line: say nothing
                kept.append(f"{OUTSIDE}: {header['kind']} elided")
            continue
        included = _INCLUDED.match(line)
        if included:
            keeping = False
            if included["file"] in user_files:
                kept.append(f"{USER_FILE_NAME}:{included['line']}: included here")
            continue
        if _SUMMARY.match(line):
            keeping = False
            kept.append(line)
        elif keeping:
            kept.append(line)  # the source line, caret and fix-it of the user's own diagnostic
        elif _UNLOCATED.match(line):
            kept.append(_mask_paths(line))
    return "\n".join(_merge_repeats(kept))


def _merge_repeats(lines: list[str]) -> list[str]:
    """Collapses runs of the same elided line (headers warn by the dozen) into one with a count."""
    merged: list[str] = []
    count = 0
    for i, line in enumerate(lines):
        count += 1
        if i + 1 < len(lines) and lines[i + 1] == line and line.startswith(OUTSIDE):
            continue
        merged.append(f"{line} ({count} times)" if count > 1 else line)
        count = 0
    return merged
