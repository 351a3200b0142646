"""Kernel function addresses from /proc/kallsyms, to name what a loaded program's calls reach.

In the translated instructions the kernel hands back, a helper call's immediate is the address of the
function the verifier picked minus the address of __bpf_call_base. /proc/kallsyms is 5 MB of text
with over 100,000 symbols; it is read once per agent process and only the functions that implement
a helper are kept (a few thousand). An address outside them is looked up in a fresh read, once: it
is a kfunc or something unknown, which is the rare path of a program about to be refused.
"""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass, field
from pathlib import Path

from node_agent.errors import KernelError
from node_agent.kernel.helper_names import helper_name

KALLSYMS = Path("/proc/kallsyms")
CALL_BASE = "__bpf_call_base"

# "<address> <type> <name>[\t[module]]"; functions are of type t or T. Candidates for helpers are picked
# by name first, so that the mapping runs on a few thousand names rather than on all of them.
_HELPER_CANDIDATE = re.compile(
    r"^([0-9a-f]+) [tT] ((?:bpf_\w+|\w+_elem|\w+_redirect|__bpf_call_base)(?:\.\w+)*)(?:\t.*)?$",
    re.MULTILINE,
)


@dataclass
class KernelSymbols:
    """The address calls are relative to, and the helper implementations by address."""

    call_base: int
    helpers: dict[int, tuple[str, str]]  # address -> (symbol, UAPI helper name)
    source: Path = KALLSYMS
    # Every function by address, parsed from one full read at the first call that is no helper.
    _functions: dict[int, str] | None = field(default=None)
    # Every symbol (variables too) by address, read at the first 64-bit constant of a program.
    _symbols: dict[int, str] | None = field(default=None)

    @classmethod
    def parse(cls, text: str, source: Path = KALLSYMS) -> KernelSymbols:
        call_base = 0
        helpers: dict[int, tuple[str, str]] = {}
        for match in _HELPER_CANDIDATE.finditer(text):
            address, symbol = int(match.group(1), 16), match.group(2)
            if symbol == CALL_BASE:
                call_base = address
                continue
            name = helper_name(symbol)
            if name is not None and address:
                helpers.setdefault(address, (symbol, name))  # aliases at one address: the first
        if not call_base:
            # kptr_restrict, or a caller without CAP_SYSLOG: every address reads as zero.
            raise KernelError(
                f"{source} shows no address for {CALL_BASE}: the agent cannot tell which helpers a"
                " program calls (run it privileged, with kernel.kptr_restrict < 2)"
            )
        return cls(call_base, helpers, source)

    def helper_at(self, offset: int) -> tuple[str, str] | None:
        """(symbol, helper) of the function at __bpf_call_base + offset, if it implements a helper."""
        return self.helpers.get(self.call_base + offset)

    def symbol_at(self, offset: int) -> str | None:
        """Any function's name at __bpf_call_base + offset."""
        address = self.call_base + offset
        if address in self.helpers:
            return self.helpers[address][0]
        if self._functions is None:
            self._functions = _functions(self.source.read_text())
        return self._functions.get(address)

    def any_symbol_at(self, address: int) -> str | None:
        """The name of the kernel symbol (function or variable) at absolute `address`."""
        if self._symbols is None:
            self._symbols = _all_symbols(self.source.read_text())
        return self._symbols.get(address)


def _all_symbols(text: str) -> dict[int, str]:
    found: dict[int, str] = {}
    for m in _SYMBOL.finditer(text):
        address = int(m.group(1), 16)
        if address:
            found.setdefault(address, m.group(2))
    return found


_SYMBOL = re.compile(r"^([0-9a-f]+) \w (\S+)", re.MULTILINE)


def _functions(text: str) -> dict[int, str]:
    return {int(m.group(1), 16): m.group(2) for m in _FUNCTION.finditer(text)}


_FUNCTION = re.compile(r"^([0-9a-f]+) [tT] (\S+)", re.MULTILINE)


_cache: KernelSymbols | None = None
_lock = threading.Lock()


def kernel_symbols() -> KernelSymbols:
    """This kernel's symbols, read on first use and kept for the life of the process."""
    global _cache
    with _lock:
        if _cache is None:
            try:
                text = KALLSYMS.read_text()
            except OSError as e:
                raise KernelError(f"cannot read {KALLSYMS}: {e}") from None
            _cache = KernelSymbols.parse(text)
        return _cache
