"""Just enough ELF64 to turn a symbol into the file offset a uprobe is placed at.

The kernel probes (inode, file offset); a symbol's st_value is a virtual address, so the offset is
st_value minus the containing PT_LOAD segment's p_vaddr plus its p_offset. Symbols come from
.symtab, or from .dynsym when the binary is stripped.
"""

from __future__ import annotations

import mmap
import struct
from typing import BinaryIO

from node_agent.errors import ElfError

_MAGIC = b"\x7fELF"
_ELFCLASS64 = 2
_ELFDATA2LSB, _ELFDATA2MSB = 1, 2
_PT_LOAD = 1
_SHT_SYMTAB, _SHT_DYNSYM = 2, 11
_SHN_UNDEF = 0
_STT_NOTYPE, _STT_FUNC = 0, 2
_SYM_SIZE = 24


def symbol_offset(file: BinaryIO, symbol: str, name: str) -> int:
    """The file offset of a defined function symbol; `name` is the path to put in messages."""
    try:
        with mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ) as data:
            return _Elf(data, name).symbol_offset(symbol)
    except (ValueError, OSError, IndexError, struct.error) as e:
        # An empty file (mmap refuses it), or headers pointing past the end of a truncated one.
        raise ElfError(f"{name} is not a readable ELF file: {e}") from None


class _Elf:
    def __init__(self, data: mmap.mmap, name: str) -> None:
        self.data, self.name = data, name
        if data[:4] != _MAGIC:
            raise ElfError(f"{name} is not an ELF file")
        if data[4] != _ELFCLASS64:
            raise ElfError(f"{name} is not a 64-bit ELF file")
        if data[5] not in (_ELFDATA2LSB, _ELFDATA2MSB):
            raise ElfError(f"{name} has an unknown ELF byte order")
        self.order = "<" if data[5] == _ELFDATA2LSB else ">"
        (self.phoff, self.shoff) = self._unpack("QQ", 32)
        (self.phentsize, self.phnum, self.shentsize, self.shnum) = self._unpack("HHHH", 54)

    def _unpack(self, fmt: str, offset: int) -> tuple[int, ...]:
        return struct.unpack_from(self.order + fmt, self.data, offset)

    def _sections(self) -> list[tuple[int, int, int, int, int]]:
        """(type, offset, size, link, entsize) of every section."""
        found = []
        for i in range(self.shnum):
            base = self.shoff + i * self.shentsize
            sh_type = self._unpack("I", base + 4)[0]
            sh_offset, sh_size, sh_link = self._unpack("QQI", base + 24)
            sh_entsize = self._unpack("Q", base + 56)[0]
            found.append((sh_type, sh_offset, sh_size, sh_link, sh_entsize))
        return found

    def _names(self, strtab: tuple[int, int, int, int, int], wanted: bytes) -> set[int]:
        """Every index into the string table where `wanted` (NUL included) starts: tables share
        suffixes, so a name may also start in the middle of a longer one."""
        _, offset, size, _, _ = strtab
        found, at = set(), self.data.find(wanted, offset, offset + size)
        while at >= 0:
            found.add(at - offset)
            at = self.data.find(wanted, at + 1, offset + size)
        return found

    def _find(self, symbol: bytes, table: int) -> int | None:
        """st_value of the first defined function symbol of that name in a section of type `table`."""
        sections = self._sections()
        for sh_type, offset, size, link, entsize in sections:
            if sh_type != table or link >= len(sections) or entsize not in (0, _SYM_SIZE):
                continue
            names = self._names(sections[link], symbol + b"\0")
            if not names:
                continue
            table_bytes = self.data[offset : offset + size - size % _SYM_SIZE]
            for st_name, st_info, _, st_shndx, st_value, _ in struct.iter_unpack(
                self.order + "IBBHQQ", table_bytes
            ):
                if st_name in names and st_shndx != _SHN_UNDEF and st_info & 0xF in (_STT_NOTYPE, _STT_FUNC):
                    return int(st_value)
        return None

    def symbol_offset(self, symbol: str) -> int:
        encoded = symbol.encode()
        value = self._find(encoded, _SHT_SYMTAB)
        if value is None:
            value = self._find(encoded, _SHT_DYNSYM)
        if value is None:
            raise ElfError(f"no symbol {symbol} in {self.name}")
        for i in range(self.phnum):
            base = self.phoff + i * self.phentsize
            p_type = self._unpack("I", base)[0]
            p_offset, p_vaddr, _, p_filesz = self._unpack("QQQQ", base + 8)
            if p_type == _PT_LOAD and p_vaddr <= value < p_vaddr + p_filesz:
                return int(value - p_vaddr + p_offset)
        raise ElfError(f"symbol {symbol} of {self.name} is not in a loaded part of the file")
