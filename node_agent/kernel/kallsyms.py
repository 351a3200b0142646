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
    _others: dict[int, str] = field(default_factory=dict)  # addresses looked up in a full read

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
        """Any function's name at __bpf_call_base + offset (a fresh read of the whole table)."""
        address = self.call_base + offset
        if address in self.helpers:
            return self.helpers[address][0]
        if address not in self._others:
            self._others[address] = _find_function(self.source.read_text(), address) or ""
        return self._others[address] or None


def _find_function(text: str, address: int) -> str | None:
    match = re.search(rf"^0*{address:x} [tT] (\S+)", text, re.MULTILINE)
    return match.group(1) if match else None


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
