"""The pure parts of loading bytecode: .rodata parameters, the ELF checks before libbpf, the version
source, what a node without headers or BTF serves, and the request the agent sends its worker."""

from __future__ import annotations

import base64
import hashlib
import struct
from pathlib import Path

import pytest

from node_agent import errors
from node_agent.errors import InvalidSpec
from node_agent.features import NodeFeatures
from node_agent.kernel import bpf_elf, bytecode_params
from node_agent.kernel.attach_types import kernel_attach
from node_agent.kernel.backend import Bytecode, ProgramBuild
from node_agent.kernel.built import BuildFailure
from node_agent.kernel.bytecode_btf import Global
from node_agent.kernel.loader import ENTRY_OBJECT, Loader
from node_agent.model import program_version
from tests.unit.builders import node_program, parsed

ELF_BYTES = b"\x7fELF-not-really-but-hashed"
EGRESS = kernel_attach({"type": "CgroupSkb", "direction": "Egress"})
EXEC = kernel_attach({"type": "Tracepoint", "name": "sched:sched_process_exec"})

# .rodata of: const volatile __u32 STEP = 1; const volatile char LABEL[8] = "none"; const volatile __s8 BIAS;
RODATA = {
    "STEP": Global("STEP", 0, 4, "int"),
    "LABEL": Global("LABEL", 4, 8, "char[]"),
    "BIAS": Global("BIAS", 12, 1, "int", signed=True),
    "TABLE": Global("TABLE", 16, 16, "other"),
}
INITIAL = (1).to_bytes(4, "little") + b"none".ljust(8, b"\0") + bytes(20)


def test_parameters_are_written_into_their_globals_and_nothing_else():
    out = bytecode_params.apply(INITIAL, RODATA, {"STEP": 7, "LABEL": "web", "BIAS": -2})
    assert out[0:4] == (7).to_bytes(4, "little")
    assert out[4:12] == b"web\0\0\0\0\0"
    assert out[12] == 0xFE
    assert out[13:] == INITIAL[13:]


@pytest.mark.parametrize(
    ("parameters", "message"),
    [
        (
            {"PORT": 53},
            r"parameter PORT: the object has no `const volatile` global PORT in \.rodata"
            r" \(its parameters: BIAS, LABEL, STEP\)",
        ),
        ({"STEP": 1 << 32}, r"does not fit its unsigned 32-bit global"),
        ({"STEP": -1}, r"does not fit its unsigned 32-bit global"),
        ({"BIAS": 128}, r"does not fit its signed 8-bit global"),
        ({"STEP": "7"}, r"an integer global takes no string"),
        ({"LABEL": "12345678"}, r"8 bytes do not fit its char\[8\]"),  # the NUL must fit too
        ({"LABEL": 3}, r"a char array takes a string"),
        ({"TABLE": 1}, r"only integer and char array globals"),
    ],
)
def test_parameters_that_do_not_fit_are_refused_with_what_is_wrong(parameters, message):
    with pytest.raises(BuildFailure, match=message) as refused:
        bytecode_params.apply(INITIAL, RODATA, parameters)
    assert refused.value.reason == "CompileError"


def test_defines_turn_back_into_typed_values():
    assert bytecode_params.from_defines((("N", "53"), ("NAME", '"a\\"b"'), ("ON", "1"))) == {
        "N": 53,
        "NAME": 'a"b',
        "ON": 1,
    }


def elf(machine: int = bpf_elf.EM_BPF, symbols: list[tuple[str, int, int]] = ()) -> bytes:
    """A 64-bit little-endian ELF with a symbol table: (name, bind, section index) per symbol."""
    strtab = b"\0" + b"".join(name.encode() + b"\0" for name, _, _ in symbols)
    entries, offset = [bytes(24)], 1
    for name, bind, shndx in symbols:
        entries.append(struct.pack("<IBBHQQ", offset, bind << 4, 0, shndx, 0, 0))
        offset += len(name) + 1
    symtab = b"".join(entries)
    header_size, str_at = 64, 64
    sym_at = str_at + len(strtab)
    sh_at = sym_at + len(symtab)
    sections = [
        bytes(64),
        struct.pack("<IIQQQQIIQQ", 0, 3, 0, 0, str_at, len(strtab), 0, 0, 1, 0),
        struct.pack("<IIQQQQIIQQ", 0, 2, 0, 0, sym_at, len(symtab), 1, 1, 8, 24),
    ]
    header = (
        b"\x7fELF\x02\x01\x01"
        + bytes(9)
        + struct.pack("<HHIQQQIHHHHHH", 1, machine, 1, 0, 0, sh_at, 0, header_size, 0, 0, 64, 3, 0)
    )
    return header + strtab + symtab + b"".join(sections)


def test_undefined_globals_are_the_objects_externs():
    data = elf(symbols=[("bpf_rcu_read_lock", 1, 0), ("my_map", 1, 5), ("weak_one", 2, 0), ("local", 0, 0)])
    assert bpf_elf.undefined_symbols(data) == ["bpf_rcu_read_lock", "weak_one"]


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"int main;", "not an ELF object"),
        (elf(machine=62), r"not BPF bytecode \(machine 62\)"),
        (b"\x7fELF\x01" + bytes(80), "not 64-bit"),
        (elf(symbols=[("x", 1, 0)])[:-70], "malformed"),  # the section table cut off
    ],
)
def test_what_is_no_bpf_object_is_refused_before_libbpf_reads_it(data, message):
    with pytest.raises(BuildFailure, match=message):
        bpf_elf.undefined_symbols(data)


def bytecode_version(data: bytes, sha256: str | None = None) -> dict:
    version = node_program(source="")
    version["spec"]["source"] = {
        "bytecode": {"data": base64.b64encode(data).decode()},
        "origin": "configMap:a/b/c",
    }
    if sha256:
        version["spec"]["source"]["sha256"] = sha256
    return version


def test_a_bytecode_version_parses_to_its_elf_and_a_new_elf_is_a_new_version():
    program = parsed(bytecode_version(ELF_BYTES, hashlib.sha256(ELF_BYTES).hexdigest()))
    assert program.build.bytecode == Bytecode(data=ELF_BYTES, sha256=hashlib.sha256(ELF_BYTES).hexdigest())
    assert program.build.source == ""
    other = parsed(bytecode_version(ELF_BYTES + b"\0"))
    assert program.ref.version != other.ref.version
    c_source = parsed(node_program())
    assert c_source.build.bytecode is None
    assert program_version(c_source.build) != program.ref.version


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ({"bytecode": {"data": "!!"}}, "not valid base64"),
        (
            {"bytecode": {"data": base64.b64encode(ELF_BYTES).decode()}, "sha256": "0" * 64},
            "has sha256 .*, not 0{64}",
        ),
        ({"bytecode": {"data": "AA=="}, "text": "int x;"}, "exactly one of text and bytecode"),
        ({"bytecode": {}}, "neither data nor image"),
        ({"bytecode": {"data": "AA=="}, "sha256": "ABC"}, "64 lowercase hex"),
    ],
)
def test_bytecode_sources_that_cannot_be_served_are_invalid(source, message):
    version = node_program()
    version["spec"]["source"] = source
    with pytest.raises(InvalidSpec, match=message):
        parsed(version)


def features(headers: bool, btf: bool) -> NodeFeatures:
    return NodeFeatures(
        kernel="6.18.0",
        btf=btf,
        tracefs=Path("/sys/kernel/tracing"),
        kprobes=False,
        program_types={"CgroupSkb": True},
        no_headers=None if headers else "no kernel headers to compile with",
    )


def test_bytecode_runs_without_headers_and_needs_btf():
    no_headers = features(headers=False, btf=True)
    assert no_headers.unsupported("CgroupSkb", bytecode=True) is None
    assert no_headers.unsupported("CgroupSkb") == "no kernel headers to compile with"
    no_btf = features(headers=True, btf=False)
    assert "has no BTF (/sys/kernel/btf/vmlinux)" in (no_btf.unsupported("CgroupSkb", bytecode=True) or "")
    assert no_btf.unsupported("CgroupSkb") is None
    assert no_headers.unsupported("Xdp", bytecode=True) == "the kernel (6.18.0) does not load Xdp programs"


def loader(tmp_path: Path) -> Loader:
    return Loader((), "", "python3", 10.0, bytecode_dir=tmp_path)


def test_the_worker_request_for_bytecode_carries_the_elf_typed_parameters_and_the_filter(tmp_path: Path):
    (tmp_path / ENTRY_OBJECT).write_bytes(b"entry-object")
    build = ProgramBuild(
        "", "count", EXEC, defines=(("N", "3"), ("S", '"x"')), bytecode=Bytecode(data=ELF_BYTES)
    )
    request = loader(tmp_path)._request(build)
    assert base64.b64decode(request["bytecode"]) == ELF_BYTES
    assert base64.b64decode(request["entryBytecode"]) == b"entry-object"
    assert request["parameters"] == {"N": 3, "S": "x"}
    assert (request["entryPoint"], request["privilege"], request["cluster"]) == (True, "tracing", False)
    assert "source" not in request and "includeDirs" not in request
    plain = loader(tmp_path)._request(ProgramBuild("", "count", EGRESS, bytecode=Bytecode(data=ELF_BYTES)))
    assert not plain["entryPoint"] and "entryBytecode" not in plain


def test_bytecode_the_agent_cannot_build_fails_before_any_worker(tmp_path: Path):
    with pytest.raises(errors.CompileError, match=r"cannot be read .*make bytecode"):
        loader(tmp_path)._request(ProgramBuild("", "count", EXEC, bytecode=Bytecode(data=ELF_BYTES)))
    with pytest.raises(errors.CompileError, match="not fetched"):
        loader(tmp_path)._request(ProgramBuild("", "count", EGRESS, bytecode=Bytecode()))
    with pytest.raises(errors.SourceHashMismatch, match=f"expected sha256 {'0' * 64}, got [0-9a-f]{{64}}"):
        loader(tmp_path)._request(
            ProgramBuild("", "c", EGRESS, bytecode=Bytecode(data=ELF_BYTES, sha256="0" * 64))
        )


def test_the_bytecode_worker_path_never_imports_bcc():
    import subprocess
    import sys

    script = (
        "import sys\n"
        "import node_agent.kernel.compile_worker, node_agent.kernel.bytecode_build\n"
        "assert not [m for m in sys.modules if m == 'bcc' or m.startswith('bcc.')], 'bcc imported'\n"
        "assert 'node_agent.kernel.bcc_build' not in sys.modules\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr


def test_the_agent_refuses_c_but_not_bytecode_on_a_node_without_headers():
    from node_agent.reconcile import _unsupported

    no_headers, no_btf = features(headers=False, btf=True), features(headers=True, btf=False)
    bytecode, c_source = parsed(bytecode_version(ELF_BYTES)), parsed(node_program())
    assert _unsupported(no_headers, bytecode) is None
    assert _unsupported(no_headers, c_source) == "no kernel headers to compile with"
    assert "has no BTF" in (_unsupported(no_btf, bytecode) or "")
    assert _unsupported(no_btf, c_source) is None
