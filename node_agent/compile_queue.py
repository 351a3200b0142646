"""Which program versions start compiling next, so that one namespace's compiles cannot starve another's.

Compiles are the expensive step (hundreds of ms to seconds of clang each) and run in the compile
pool (compile_pool), which asks this queue whenever it has free slots. Each turn (a `plan`) starts at
most `per_namespace` versions of one namespace and `per_pass` (or the free slots) in all, taking
namespaces in turn: the ones served longest ago (or never) first, and in a namespace the versions
that have waited longest first. What is left waits for a later turn. The pins of ClusterEbpfPrograms
("_cluster") count as one namespace. Pure: no I/O.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from dataclasses import dataclass, field

from node_agent.kernel.backend import ProgramRef


@dataclass(frozen=True)
class CompilePlan:
    now: list[ProgramRef]  # to build in this turn, in this order
    # The versions that wait for a later turn, with how many builds are ahead of each in line.
    later: dict[ProgramRef, int]


@dataclass
class CompileQueue:
    per_namespace: int = 1
    per_pass: int = 0  # 0: no bound on a pass's builds beyond the per-namespace one
    _arrival: dict[ProgramRef, int] = field(default_factory=dict)
    _served: dict[str, int] = field(default_factory=dict)  # namespace -> the pass it last built in
    _passes: itertools.count[int] = field(default_factory=itertools.count)
    _arrivals: itertools.count[int] = field(default_factory=itertools.count)

    def __post_init__(self) -> None:
        if self.per_namespace < 1 or self.per_pass < 0:
            raise ValueError("builds per namespace must be at least 1, builds per pass 0 (no bound) or more")

    def plan(self, wanted: Iterable[ProgramRef], limit: int | None = None) -> CompilePlan:
        """`wanted`: the versions that need a build now. Versions no longer wanted (built, failed or
        deleted) leave the line; ones wanted again later join at its end. `limit`, when given,
        bounds this turn instead of `per_pass` (the pool's free slots)."""
        bound = self.per_pass if limit is None else limit
        pass_number = next(self._passes)
        wanted = list(dict.fromkeys(wanted))  # in the order given: arrivals in one pass keep it
        self._arrival = {ref: self._arrival.get(ref, -1) for ref in wanted}
        for ref in wanted:
            if self._arrival[ref] < 0:
                self._arrival[ref] = next(self._arrivals)
        groups: dict[str, list[ProgramRef]] = {}
        for ref in sorted(wanted, key=self._arrival.__getitem__):
            groups.setdefault(ref.namespace, []).append(ref)
        # Only namespaces still waiting are remembered: memory stays bounded by what is queued.
        self._served = {ns: n for ns, n in self._served.items() if ns in groups}
        turns = sorted(groups, key=lambda ns: (self._served.get(ns, -1), self._arrival[groups[ns][0]], ns))

        line: list[ProgramRef] = []  # everything wanted, in the order it would be built
        for round_ in range(max(len(g) for g in groups.values()) if groups else 0):
            line += [groups[ns][round_] for ns in turns if round_ < len(groups[ns])]
        now: list[ProgramRef] = []
        taken: dict[str, int] = {}
        for ref in line:
            if (bound or limit is not None) and len(now) >= bound:
                break
            if taken.get(ref.namespace, 0) < self.per_namespace:
                taken[ref.namespace] = taken.get(ref.namespace, 0) + 1
                now.append(ref)
        for namespace in taken:
            self._served[namespace] = pass_number
        building = set(now)
        rest = [ref for ref in line if ref not in building]
        return CompilePlan(now, {ref: len(now) + i for i, ref in enumerate(rest)})
