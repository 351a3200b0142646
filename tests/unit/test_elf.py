"""The ELF reader against binaries compiled here, checked with binutils (nm, readelf) and with the
bytes found at the offset it returns."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from node_agent import elf
from node_agent.errors import AttachFailed, ElfError

# `magic` is six known bytes, so the bytes at its offset prove the offset right on any architecture.
SOURCE = r"""
#include <stdio.h>
__attribute__((noinline)) int bpfleet_probe_target(int x) { __asm__ volatile("" ::: "memory"); return x + 1; }
__asm__(".text\n.globl magic\n.type magic, @function\nmagic:\n.byte 0xde,0xad,0xbe,0xef,0x13,0x37\n"
        ".size magic, 6\n");
int main(int argc, char **argv) { puts(argv[0]); return bpfleet_probe_target(argc); }
"""
MAGIC = bytes.fromhex("deadbeef1337")
LIBRARY_SOURCE = SOURCE.replace("int main(", "int not_main(")


def run(*argv: str) -> str:
    return subprocess.run(argv, capture_output=True, text=True, check=True, timeout=120).stdout


@pytest.fixture(scope="module")
def binaries(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A PIE, a static executable, and a stripped shared library (its symbols only in .dynsym)."""
    out = tmp_path_factory.mktemp("elf")
    (out / "t.c").write_text(SOURCE)
    (out / "lib.c").write_text(LIBRARY_SOURCE)
    built = {"pie": out / "pie", "static": out / "static", "stripped-library": out / "lib.so"}
    run("gcc", "-O2", "-fPIE", "-pie", "-o", str(built["pie"]), str(out / "t.c"))
    run("gcc", "-O2", "-static", "-o", str(built["static"]), str(out / "t.c"))
    run("gcc", "-O2", "-fPIC", "-shared", "-o", str(built["stripped-library"]), str(out / "lib.c"))
    run("strip", "--strip-all", str(built["stripped-library"]))
    return built


def binutils_offset(path: Path, symbol: str) -> int:
    """The offset from nm's symbol value and readelf's PT_LOAD segments."""
    dynamic = ".symtab" not in run("readelf", "-SW", str(path))
    symbols = run("nm", "--defined-only", *(["-D"] if dynamic else []), str(path))
    [value] = [int(line.split()[0], 16) for line in symbols.splitlines() if line.split()[-1] == symbol]
    for line in run("readelf", "-lW", str(path)).splitlines():
        fields = line.split()
        if fields and fields[0] == "LOAD":
            offset, vaddr, _, filesz = (int(f, 16) for f in fields[1:5])
            if vaddr <= value < vaddr + filesz:
                return value - vaddr + offset
    raise AssertionError(f"{symbol} of {path} is in no LOAD segment")


def offset(path: Path, symbol: str) -> int:
    with path.open("rb") as f:
        return elf.symbol_offset(f, symbol, "/bin/x")


@pytest.mark.parametrize("kind", ["pie", "static", "stripped-library"])
def test_a_symbols_offset_is_what_binutils_say_and_holds_the_functions_bytes(binaries, kind):
    path = binaries[kind]
    for symbol in ("bpfleet_probe_target", "magic"):
        assert offset(path, symbol) == binutils_offset(path, symbol)
    at = offset(path, "magic")
    assert path.read_bytes()[at : at + len(MAGIC)] == MAGIC


def test_the_stripped_library_has_no_symtab_so_the_dynsym_answered(binaries):
    assert ".symtab" not in run("readelf", "-SW", str(binaries["stripped-library"]))
    assert ".symtab" in run("readelf", "-SW", str(binaries["pie"]))


def test_missing_and_undefined_symbols_are_not_found(binaries):
    with pytest.raises(ElfError, match=r"^no symbol bpfleet_nope in /bin/x$"):
        offset(binaries["pie"], "bpfleet_nope")
    # puts is in the PIE's .dynsym, but undefined: it lives in libc.
    assert " puts" in run("nm", "-D", str(binaries["pie"]))
    with pytest.raises(ElfError, match="no symbol puts in /bin/x"):
        offset(binaries["pie"], "puts")


def test_files_that_are_not_elf64_fail_with_an_attach_error(binaries, tmp_path: Path):
    cases = {
        "text": (b"#!/bin/sh\necho hi\n", "is not an ELF file"),
        "empty": (b"", "is not a readable ELF file"),
        "truncated": (binaries["pie"].read_bytes()[:100], "is not a readable ELF file"),
        "elf32": (b"\x7fELF\x01\x01\x01" + bytes(100), "is not a 64-bit ELF file"),
    }
    for name, (content, message) in cases.items():
        (tmp_path / name).write_bytes(content)
        with pytest.raises(AttachFailed, match=message):
            offset(tmp_path / name, "main")
