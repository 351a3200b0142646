"""The little the loader reads of a BPF object's ELF itself, before libbpf: that it is one, and its
undefined symbols (externs: kernel variables and kfuncs, `.kconfig` values). libbpf rewrites kfunc
externs at open, so their names are read here, from the symbol table the compiler wrote.

The bytes are hostile: every offset is checked against the buffer, and a table too large is refused.
"""

from __future__ import annotations

import struct

from node_agent.kernel.built import BuildFailure

EM_BPF = 247
_SHT_SYMTAB = 2
_SHN_UNDEF = 0
_STB_GLOBAL, _STB_WEAK = 1, 2
_MAX_SECTIONS = 1 << 14
_MAX_SYMBOLS = 1 << 16


def check_header(data: bytes) -> str:
    """The byte order ("<" or ">") of a 64-bit BPF ELF object; raises BuildFailure otherwise."""
    if data[:4] != b"\x7fELF" or len(data) < 64:
        raise BuildFailure("CompileError", "the bytecode is not an ELF object")
    if data[4] != 2:
        raise BuildFailure("CompileError", "the ELF object is not 64-bit: BPF objects are")
    order = "<" if data[5] == 1 else ">"
    (machine,) = struct.unpack_from(f"{order}H", data, 18)
    if machine != EM_BPF:
        raise BuildFailure("CompileError", f"the ELF object is not BPF bytecode (machine {machine})")
    return order


def undefined_symbols(data: bytes) -> list[str]:
    """The names of the object's undefined global symbols, sorted; raises BuildFailure when the
    tables do not fit the file."""
    order = check_header(data)
    try:
        return sorted(_undefined(data, order))
    except (struct.error, IndexError, UnicodeDecodeError):
        raise BuildFailure(
            "CompileError", "the ELF object's section or symbol tables are malformed"
        ) from None


def _undefined(data: bytes, order: str) -> set[str]:
    (shoff,) = struct.unpack_from(f"{order}Q", data, 0x28)
    shentsize, shnum = struct.unpack_from(f"{order}HH", data, 0x3A)
    if shnum > _MAX_SECTIONS or (shnum and shentsize < 64):
        raise struct.error("section table")
    sections = [struct.unpack_from(f"{order}IIQQQQIIQQ", data, shoff + i * shentsize) for i in range(shnum)]
    names: set[str] = set()
    for _name, kind, _flags, _addr, offset, size, link, _info, _align, entsize in sections:
        if kind != _SHT_SYMTAB:
            continue
        if entsize < 24 or size // entsize > _MAX_SYMBOLS or offset + size > len(data):
            raise struct.error("symbol table")
        strtab = sections[link]
        str_offset, str_size = strtab[4], strtab[5]
        if str_offset + str_size > len(data):
            raise struct.error("string table")
        for i in range(size // entsize):
            name_off, info, _other, shndx = struct.unpack_from(f"{order}IBBH", data, offset + i * entsize)
            if shndx == _SHN_UNDEF and info >> 4 in (_STB_GLOBAL, _STB_WEAK) and 0 < name_off < str_size:
                end = data.index(b"\0", str_offset + name_off, str_offset + str_size)
                names.add(data[str_offset + name_off : end].decode())
    return names
