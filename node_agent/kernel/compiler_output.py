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
_PATH = re.compile(r"(?<![\w.])/[^\s:'\"()]+")


def _mask_paths(line: str) -> str:
    return _PATH.sub(OUTSIDE, line)


def user_diagnostics(output: str, main_is_user: bool = False) -> str:
    """The compiler output with everything located outside program.c elided. `main_is_user`: BCC's
    main file is the user's text alone (no prelude before it), so it is program.c too."""
    user_files = {USER_FILE_NAME, BCC_MAIN_FILE} if main_is_user else {USER_FILE_NAME}
    kept: list[str] = []
    # Whose lines are being read: a diagnostic's source, caret and fix-it lines follow its header.
    owner = "compiler"  # "user", "outside", or the compiler's (BCC's) own unlocated messages
    for line in output.splitlines():
        if line.startswith("; ModuleID"):
            break  # an IR dump follows: not for users
        header = _HEADER.match(line)
        if header:
            owner = "user" if header["file"] in user_files else "outside"
            if owner == "user":
                kept.append(USER_FILE_NAME + line[len(header["file"]) :])
            elif header["kind"] != "note":  # an elided note explains an elided line: say nothing
                kept.append(f"{OUTSIDE}: {header['kind']} elided")
            continue
        included = _INCLUDED.match(line)
        if included:
            owner = "outside"
            if included["file"] in user_files:
                kept.append(f"{USER_FILE_NAME}:{included['line']}: included here")
        elif _SUMMARY.match(line):
            owner = "compiler"
            kept.append(line)
        elif owner == "user":
            kept.append(line)
        elif owner == "compiler" and line.strip():
            kept.append(_mask_paths(line))  # BCC's own messages ("could not open bpf map: ...")
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
