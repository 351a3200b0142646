"""Every builtin also ships as CO-RE bytecode, from the same source (bpf/include/bpfleet_portable.h):
`make bytecode` builds each one with clang; each ELF has the functions, maps and parameters its yaml
declares, the kernel's verifier accepts each of its programs, and its maps are the very maps (type,
key and value sizes, entries) that the BCC build of the same source makes."""

from __future__ import annotations

import ctypes
import json
import secrets
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import bcc
import pytest
import yaml
from elftools.elf.elffile import ELFFile
from elftools.elf.sections import SymbolTableSection

from tests.kernel.support import BPFFS, INCLUDE_DIR, PROGRAMS, REPO

pytestmark = pytest.mark.kernel

BUILTINS = sorted(p.stem for p in PROGRAMS.glob("*.c"))
_MAP_TYPES = {1: "hash", 2: "array"}  # BPF_MAP_TYPE_HASH, BPF_MAP_TYPE_ARRAY


@pytest.fixture(scope="module")
def objects(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The builtins' objects, built by `make bytecode` into a private build directory."""
    build = tmp_path_factory.mktemp("build")
    proc = subprocess.run(
        ["make", "-s", "--no-print-directory", "bytecode", f"BUILD={build}"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert proc.returncode == 0, f"make bytecode failed:\n{proc.stdout}{proc.stderr}"
    for name in BUILTINS:  # what it prints names every object it builds
        assert f"{build}/bytecode/{name}.bpf.o <- bpf/programs/{name}.c" in proc.stdout
    return build / "bytecode"


def contract(name: str) -> dict[str, Any]:
    return dict(yaml.safe_load((PROGRAMS / f"{name}.yaml").read_text()))


def symbols(path: Path) -> dict[str, set[str]]:
    """Section name -> names of the global symbols defined in it."""
    found: dict[str, set[str]] = {}
    with path.open("rb") as file:
        elf = ELFFile(file)
        table = elf.get_section_by_name(".symtab")
        assert isinstance(table, SymbolTableSection)
        for symbol in table.iter_symbols():
            index = symbol["st_shndx"]
            if symbol["st_info"]["bind"] != "STB_GLOBAL" or not isinstance(index, int):
                continue
            found.setdefault(elf.get_section(index).name, set()).add(symbol.name)
        assert elf["e_machine"] == "EM_BPF" and elf["e_type"] == "ET_REL"
        assert elf.has_dwarf_info() and elf.get_section_by_name(".BTF") is not None  # -g: CO-RE needs BTF
    return found


@pytest.mark.parametrize("name", BUILTINS)
def test_each_object_has_the_functions_maps_and_parameters_of_its_yaml(objects: Path, name: str):
    declared = contract(name)
    found = symbols(objects / f"{name}.bpf.o")
    functions = {
        s for section, names in found.items() if section not in (".maps", ".rodata", "license") for s in names
    }
    assert functions == set(declared["functions"])
    assert found.get(".maps", set()) == set(declared["maps"])
    assert found.get(".rodata", set()) == set(declared.get("parameters") or {})
    assert found.get("license") == {"LICENSE"}


def _bcc_maps(name: str) -> dict[str, dict[str, Any]]:
    """The maps BCC makes for the builtin's own source, with each parameter at its minimum."""
    params = contract(name).get("parameters") or {}
    defines = [f"-D{p}={spec.get('minimum', 1)}" for p, spec in params.items()]
    # Filtered tracing programs get the agent's prelude; the unfiltered one declares no maps of its own.
    text = "#include <bpfleet_unfiltered.h>\n" + (PROGRAMS / f"{name}.c").read_text()
    module = bcc.BPF(text=text.encode(), cflags=[f"-I{INCLUDE_DIR}", *defines])
    try:
        maps = {}
        for map_name in contract(name)["maps"]:
            table = module.get_table(map_name.encode())
            maps[map_name] = {
                "type": _MAP_TYPES[table.ttype],
                "key": ctypes.sizeof(table.Key),
                "value": ctypes.sizeof(table.Leaf),
                "max_entries": table.max_entries,
            }
        return maps
    finally:
        module.cleanup()


@pytest.fixture
def pin_dir() -> Iterator[Path]:
    root = BPFFS / f"bpfleet-test-bytecode-{secrets.token_hex(4)}"
    root.mkdir()
    try:
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _bpftool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bpftool", *args], capture_output=True, text=True, timeout=120, check=False)


@pytest.mark.parametrize("name", BUILTINS)
def test_the_kernel_loads_each_object_with_the_maps_of_its_bcc_build(objects: Path, pin_dir: Path, name: str):
    progs, maps = pin_dir / "progs", pin_dir / "maps"
    loaded = _bpftool("prog", "loadall", str(objects / f"{name}.bpf.o"), str(progs), "pinmaps", str(maps))
    assert loaded.returncode == 0, f"the verifier refused {name}:\n{loaded.stderr[-3000:]}"
    assert {p.name for p in progs.iterdir()} == set(contract(name)["functions"])
    bytecode_maps = {}
    for map_name in contract(name)["maps"]:
        shown = json.loads(_bpftool("-j", "map", "show", "pinned", str(maps / map_name)).stdout)
        bytecode_maps[map_name] = {
            "type": shown["type"],
            "key": shown["bytes_key"],
            "value": shown["bytes_value"],
            "max_entries": shown["max_entries"],
        }
    assert bytecode_maps == _bcc_maps(name)


def test_the_documented_user_target_builds_an_object_the_kernel_loads(tmp_path: Path, pin_dir: Path):
    out = tmp_path / "counter.bpf.o"
    source = "examples/bytecode/pod-egress-counter.bpf.c"
    built = subprocess.run(
        [
            "make",
            "-s",
            "--no-print-directory",
            "bytecode-object",
            f"SRC={source}",
            f"OUT={out}",
            f"BUILD={tmp_path}",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert built.returncode == 0, built.stderr
    assert f"{out} <- {source}" in built.stdout
    found = symbols(out)
    assert found["cgroup_skb/egress"] == {"count_egress"}
    assert found[".maps"] == {"egress"} and found[".rodata"] == {"MIN_LEN"}
    loaded = _bpftool("prog", "loadall", str(out), str(pin_dir / "progs"))
    assert loaded.returncode == 0, loaded.stderr[-3000:]

    usage = subprocess.run(
        ["make", "-s", "bytecode-object"], cwd=REPO, capture_output=True, text=True, check=False
    )
    assert usage.returncode != 0 and "usage: make bytecode-object SRC=prog.bpf.c" in usage.stderr
    assert not (tmp_path / "none").exists()  # refused before building anything
