"""Turns an ELF symbol into the file offset a uprobe is placed at, with pyelftools.

The kernel probes (inode, file offset); a symbol's st_value is a virtual address, so the offset is
st_value minus the containing PT_LOAD segment's p_vaddr plus its p_offset. Symbols come from
.symtab, or from .dynsym when the binary is stripped. The binary is the tenant's (it comes from the
pod's image), so this runs in the sandboxed symbol worker, never in the agent, and within caps.
"""

from __future__ import annotations

import os
from typing import BinaryIO

from elftools.common.exceptions import ELFError
from elftools.elf.elffile import ELFFile
from elftools.elf.sections import SymbolTableSection

from node_agent.errors import ElfError

# A binary larger than this is not parsed: uprobe targets are executables and libraries.
MAX_FILE_BYTES = 2 * 1024**3
# Symbols looked at per table: bounds the time a crafted table can take.
MAX_SYMBOLS = 4_000_000
_STT_FUNCTIONS = ("STT_FUNC", "STT_NOTYPE", "STT_GNU_IFUNC")


def symbol_offset(file: BinaryIO, symbol: str, name: str) -> int:
    """The file offset of a defined function symbol; `name` is the path to put in messages."""
    size = os.fstat(file.fileno()).st_size
    if size > MAX_FILE_BYTES:
        raise ElfError(f"{name} is {size} bytes, more than the {MAX_FILE_BYTES} bytes bpfleet reads")
    header = file.read(5)
    file.seek(0)
    if len(header) == 5 and header[:4] != b"\x7fELF":
        raise ElfError(f"{name} is not an ELF file")
    if len(header) == 5 and header[4] != 2:  # ELFCLASS64: uprobes here are for 64-bit processes
        raise ElfError(f"{name} is not a 64-bit ELF file")
    try:
        elf = ELFFile(file)
        value = _find(elf, symbol, ".symtab")
        if value is None:
            value = _find(elf, symbol, ".dynsym")
        if value is None:
            raise ElfError(f"no symbol {symbol} in {name}")
        for segment in elf.iter_segments():
            header = segment.header
            if header.p_type == "PT_LOAD" and header.p_vaddr <= value < header.p_vaddr + header.p_filesz:
                return int(value - header.p_vaddr + header.p_offset)
    except (ELFError, ValueError, OSError, IndexError, KeyError) as e:
        # Not an ELF file, or headers pointing past the end of a truncated one.
        raise ElfError(f"{name} is not a readable ELF file: {e}") from None
    raise ElfError(f"symbol {symbol} of {name} is not in a loaded part of the file")


def _find(elf: ELFFile, symbol: str, table_name: str) -> int | None:
    """st_value of the first defined function symbol of that name in the table."""
    table = elf.get_section_by_name(table_name)
    if not isinstance(table, SymbolTableSection):
        return None
    for index in range(min(table.num_symbols(), MAX_SYMBOLS)):
        entry = table.get_symbol(index)
        if (
            entry.name == symbol
            and entry["st_shndx"] != "SHN_UNDEF"
            and entry["st_info"]["type"] in _STT_FUNCTIONS
        ):
            return int(entry["st_value"])
    return None
