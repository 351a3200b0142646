"""A minimal ELF header of a relocatable BPF object: what the operator checks of bytecode before any
node sees it (the agents load the object itself; the operator reads only its header)."""

from __future__ import annotations

import struct


def bpf_object(payload: bytes = b"", *, machine: int = 247, elf_type: int = 1) -> bytes:
    ident = b"\x7fELF" + bytes([2, 1, 1]) + bytes(9)  # 64-bit, little-endian, version 1
    header = ident + struct.pack("<HHI", elf_type, machine, 1) + bytes(64 - 16 - 8)
    return header + payload
