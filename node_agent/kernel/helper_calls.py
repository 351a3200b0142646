"""What a loaded program calls, read from the instructions the kernel hands back for it.

The translated (xlated) instructions are what runs after the verifier's rewrites, so nothing a
source can do to hide a call (macros, inline assembly, raw helper ids) survives into them. On this
encoding (checked against `bpftool prog dump xlated`), a call is code BPF_JMP|BPF_CALL (0x85):
- src_reg 0: a helper; imm is the address of the implementation the verifier picked minus that of
  __bpf_call_base, except for a tail call, which the kernel shows as imm BPF_FUNC_tail_call (12).
  Helpers the verifier inlines (bpf_get_smp_processor_id, array lookups, ...) leave no call.
- src_reg 1 (BPF_PSEUDO_CALL): a call into one of the program's own subprograms.
- src_reg 2 (BPF_PSEUDO_KFUNC_CALL): a kfunc; imm is its address relative to __bpf_call_base.
Any other call-like instruction is reported as unknown, so that policy refuses what it cannot name.

Kernel variables reached without a call (a `__ksym` extern: ld_imm64 of BPF_PSEUDO_BTF_ID, or of an
address libbpf read from kallsyms) show in the xlated instructions as an ld_imm64 with src_reg 0
whose 64-bit value is the variable's address (the verifier rewrote it; maps come back as their ids
with a pseudo src_reg). Such a value that is exactly a kernel symbol's address is reported as KSYM.
"""

from __future__ import annotations

import struct
import sys

from node_agent.helper_policy import HELPER, KFUNC, KSYM, UNKNOWN, Call
from node_agent.kernel.helper_names import TAIL_CALL_ID, helper_name
from node_agent.kernel.kallsyms import KernelSymbols

_INSN = struct.Struct("=BBhi")  # code, dst_reg:4 src_reg:4, off, imm
_CALL = 0x85  # BPF_JMP | BPF_CALL
_LD_IMM64 = 0x18  # BPF_LD | BPF_IMM | BPF_DW: two instruction slots
_CLASS_JMP, _CLASS_JMP32, _OP_CALL = 0x05, 0x06, 0x80
_PSEUDO_CALL, _PSEUDO_KFUNC_CALL = 1, 2


def _src_reg(regs: int) -> int:
    # The register nibbles follow the byte order of the bitfield: src_reg is the high one on
    # little-endian machines.
    return regs >> 4 if sys.byteorder == "little" else regs & 0x0F


def calls(insns: bytes, symbols: KernelSymbols) -> list[Call]:
    """Every call of the program to something outside it, in instruction order."""
    found: list[Call] = []
    count = len(insns) // _INSN.size
    i = 0
    while i < count:
        code, regs, _, imm = _INSN.unpack_from(insns, i * _INSN.size)
        if code == _LD_IMM64 and i + 1 < count:
            found.extend(_kernel_address(insns, i, regs, symbols))
        i += 2 if code == _LD_IMM64 else 1
        if code & 0x07 not in (_CLASS_JMP, _CLASS_JMP32) or code & 0xF0 != _OP_CALL:
            continue
        src = _src_reg(regs)
        if code != _CALL:
            found.append(Call(UNKNOWN, f"an unexpected call instruction (code {code:#04x})"))
        elif src == _PSEUDO_CALL:
            continue  # the program's own code
        elif src == _PSEUDO_KFUNC_CALL:
            found.append(Call(KFUNC, symbols.symbol_at(imm) or f"at {_offset(imm)}"))
        elif src != 0:
            found.append(Call(UNKNOWN, f"a call of an unknown form (src_reg {src})"))
        else:
            found.append(_helper_call(imm, symbols))
    return found


def _kernel_address(insns: bytes, i: int, regs: int, symbols: KernelSymbols) -> list[Call]:
    if _src_reg(regs) != 0:
        return []  # a map (by id), a map value or a callback: the program's own
    low = _INSN.unpack_from(insns, i * _INSN.size)[3] & 0xFFFFFFFF
    high = _INSN.unpack_from(insns, (i + 1) * _INSN.size)[3] & 0xFFFFFFFF
    value = high << 32 | low
    name = symbols.any_symbol_at(value) if value else None
    return [Call(KSYM, name)] if name else []


def _helper_call(imm: int, symbols: KernelSymbols) -> Call:
    if imm == TAIL_CALL_ID:
        return Call(HELPER, "tail_call")
    known = symbols.helper_at(imm)
    if known is not None:
        return Call(HELPER, known[1])
    # Not among the helpers read at start: a module loaded since, a kfunc-like target, or nothing.
    symbol = symbols.symbol_at(imm)
    name = helper_name(symbol) if symbol else None
    if name is not None:
        return Call(HELPER, name)
    return Call(UNKNOWN, symbol or f"the kernel function at {_offset(imm)}")


def _offset(imm: int) -> str:
    return f"__bpf_call_base{imm:+#x}"
