"""The desired table: which version of which program each node's EbpfNodeState must name (where the
node must differ from its program's placement, placement.py), as the program reconciles decided it.
The node writer turns it into EbpfNodeState specs, one write per node for however many programs
changed. Shared by the reconcile workers' threads, hence the lock."""

from __future__ import annotations

import threading
from collections.abc import Mapping
from typing import Any

from bpfleet_operator.kinds import ProgramKey

Entry = dict[str, Any]  # {kind, namespace, name, generation, version}: one spec.programs item


def entry(key: ProgramKey, generation: int, version: str) -> Entry:
    return {
        "kind": key.kind,
        "namespace": key.namespace,
        "name": key.name,
        "generation": generation,
        "version": version,
    }


def key_of(item: Mapping[str, Any]) -> ProgramKey:
    return ProgramKey(str(item["kind"]), str(item.get("namespace") or ""), str(item["name"]))


class DesiredTable:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._by_program: dict[ProgramKey, dict[str, Entry]] = {}  # program -> node -> entry
        self._by_node: dict[str, dict[ProgramKey, Entry]] = {}  # node -> program -> entry

    def knows(self, key: ProgramKey) -> bool:
        with self._lock:
            return key in self._by_program

    def program(self, key: ProgramKey) -> dict[str, Entry]:
        with self._lock:
            return dict(self._by_program.get(key, {}))

    def set_program(self, key: ProgramKey, entries: Mapping[str, Entry]) -> set[str]:
        """The program's entries, node -> entry (nodes absent: none); returns the nodes it changed."""
        with self._lock:
            before = self._by_program.get(key, {})
            changed = {n for n in before.keys() | entries.keys() if before.get(n) != entries.get(n)}
            self._by_program[key] = dict(entries)
            for node in changed:
                programs = self._by_node.setdefault(node, {})
                if node in entries:
                    programs[key] = entries[node]
                else:
                    programs.pop(key, None)
                    if not programs:
                        del self._by_node[node]
            return changed

    def drop_program(self, key: ProgramKey) -> set[str]:
        """Forgets a program (it is gone or being deleted); returns the nodes that had it."""
        changed = self.set_program(key, {})
        with self._lock:
            self._by_program.pop(key, None)
        return changed

    def entries(self, node: str) -> list[Entry]:
        """What the node's EbpfNodeState spec.programs should be, in a stable order."""
        with self._lock:
            programs = self._by_node.get(node, {})
            return [programs[k] for k in sorted(programs)]
