"""A build caps its maps' kernel memory and shows the user only their own program's diagnostics."""

from __future__ import annotations

import secrets

import pytest

from node_agent.kernel.attach_types import PROG_TYPE_TRACEPOINT
from node_agent.kernel.bcc_build import build
from tests.kernel.support import INCLUDE_DIR, refusal
from tests.kernel.support import build_request as request

pytestmark = pytest.mark.kernel

PRELUDE = (INCLUDE_DIR / "node_wide_prelude.h").read_text()
MiB = 1 << 20


def array_source(entries: int, used: bool = True) -> str:
    body = "u32 k = 0; u64 *v = big_array.lookup(&k); return v ? 1 : 0;" if used else "return 1;"
    return f"BPF_ARRAY(big_array, u64, {entries});\nint allow(struct __sk_buff *skb) {{ {body} }}\n"


# -- map memory -------------------------------------------------------------------------------------


def test_an_800_mib_array_is_refused_under_the_default_cap():
    failure = refusal(request(array_source(800 * MiB // 8)))
    assert failure.reason == "MapTooLarge"
    assert failure.message == "map big_array needs 800.0 MiB; this program's maps may use 64.0 MiB in all"


@pytest.mark.parametrize("used", [True, False], ids=["used", "declared only"])
def test_a_map_over_the_requested_cap_is_refused(used):
    failure = refusal(request(array_source(2 * MiB // 8, used), maxMapBytes=MiB))
    assert failure.reason == "MapTooLarge"
    assert failure.message == "map big_array needs 2.0 MiB; this program's maps may use 1.0 MiB in all"


def test_the_cap_is_on_the_sum_and_the_refusal_names_the_largest_maps():
    source = "".join(f"BPF_ARRAY(m{i}, u64, {(i + 1) * 32 * 1024});\n" for i in range(5))
    source += "int allow(struct __sk_buff *skb) { return 1; }\n"
    failure = refusal(request(source, maxMapBytes=MiB))  # each fits, together they need ~3.75 MiB
    assert failure.reason == "MapTooLarge"
    assert failure.message.startswith("maps m4 1.3 MiB, m3 1.0 MiB, m2 768.")
    assert " and 2 more need 3.8 MiB in all; this program's maps may use 1.0 MiB in all" in failure.message


def test_maps_within_the_cap_build():
    built = build(request(array_source(MiB // 8 - 1024), maxMapBytes=MiB))
    try:
        assert set(built.maps) == {"big_array"}
    finally:
        built.close()


# -- diagnostics ------------------------------------------------------------------------------------


@pytest.mark.parametrize("prelude", [False, True], ids=["plain", "filtered"])
def test_a_file_outside_the_program_is_elided_from_diagnostics(tmp_path, prelude):
    marker = f"SECRET_{secrets.token_hex(8)}"
    planted = tmp_path / "node-file.h"
    planted.write_text(f"{marker} this is not C;\n{marker}_2 nor this\n")
    source = f'#include <uapi/linux/ptrace.h>\n\n#include "{planted}"\nint allow(void *ctx) {{ return 1; }}\n'
    extra = {"prelude": PRELUDE, "entryPoint": True, "progType": PROG_TYPE_TRACEPOINT} if prelude else {}
    failure = refusal(request(source, **extra))
    assert failure.reason == "CompileError"
    assert marker not in failure.message
    assert str(tmp_path) not in failure.message and "node-file.h" not in failure.message
    assert "program.c:3: included here" in failure.message
    assert "<a file outside the program>: error elided" in failure.message


def test_the_users_own_diagnostics_keep_their_lines_and_source():
    failure = refusal(
        request("#include <bpfleet.h>\n\nint allow(void *ctx) {\n    return missing_name;\n}\n")
    )
    assert failure.reason == "CompileError"
    assert "program.c:4:12: error: use of undeclared identifier 'missing_name'" in failure.message
    assert "    return missing_name;" in failure.message  # the user's own line, with its caret below


def test_the_filtered_programs_prelude_keeps_the_users_line_numbers_and_stays_hidden():
    source = "int count(void *ctx) {\n    return bpfleet_oops;\n}\n"
    failure = refusal(
        request(source, "count", prelude=PRELUDE, entryPoint=True, progType=PROG_TYPE_TRACEPOINT)
    )
    assert "program.c:2:12: error: use of undeclared identifier 'bpfleet_oops'" in failure.message
    assert "/virtual/" not in failure.message and "bpfleet_entry" not in failure.message


def test_bccs_own_messages_reach_the_user():
    # An LPM trie's key must start with a prefix length: the kernel refuses the map, BCC says so.
    failure = refusal(request("BPF_LPM_TRIE(trie, u64, u64, 16);\nint allow(void *ctx) { return 1; }\n"))
    assert failure.reason == "CompileError"
    assert "could not open bpf map: trie, error: Invalid argument" in failure.message
