"""The EbpfNodeState status of one pass: one entry per spec entry, plus the entries removed from spec
whose program still runs here (reason Unloading) until the kernel shows them gone."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from node_agent.intake import Intake
from node_agent.kernel.backend import ProgramRef
from node_agent.model import EntryKey
from node_agent.reconcile import PassResult
from node_agent.status import (
    entry_key,
    node_state_status,
    program_entry,
    refused_entry,
    serving_version,
    unloading_entry,
)

# The programs (pin namespace, name) the kernel runs now.
Running = Callable[[], set[tuple[str, str]]]


class Reporter:
    """Builds the node's status after each pass. It remembers which version object each compiled
    version came from, since a version that keeps running after a failed update is no entry's."""

    def __init__(self) -> None:
        self._names: dict[ProgramRef, str] = {}
        # The last status this reporter made: the node's status as the agent knows it, also while
        # the watch has not shown its write yet, or while it is held (status_hold).
        self._last: Mapping[str, Any] | None = None

    def status(
        self, state: Mapping[str, Any], intake: Intake, result: PassResult, running: Running
    ) -> dict[str, Any]:
        previous = _previous(self._last if self._last is not None else state.get("status") or {})
        for program in intake.programs:
            self._names[program.ref] = intake.entries[intake.keys[(program.namespace, program.name)]].version
        entries: list[dict[str, Any]] = []
        serving: set[ProgramRef] = set()
        for report in result.reports:
            key = intake.keys.get((report.namespace, report.name))
            if key is None:
                continue
            name = None
            if report.loaded is not None:
                serving.add(report.loaded.ref)
                before = previous.get(key)
                name = self._names.get(report.loaded.ref) or (serving_version(before) if before else None)
            entries.append(program_entry(report, intake.entries[key], name))
        self._names = {
            r: n for r, n in self._names.items() if r in serving or r in {p.ref for p in intake.programs}
        }
        gone = [key for key in previous if key not in intake.entries]
        unloaded = [key for key, refusal in intake.refused.items() if refusal.unload]
        live = running() if gone or unloaded else set()  # a kernel read only when it can matter
        for key, refusal in intake.refused.items():
            before = previous.get(key)
            if refusal.transient:
                if before is not None:
                    entries.append(dict(before))  # nothing new to say; asked again next pass
                continue
            if refusal.unload and key.pins not in live:
                before = None  # nothing of it runs any more
            entries.append(refused_entry(intake.entries[key], refusal.reason, refusal.message, before))
        entries += [unloading_entry(previous[key], []) for key in gone if key.pins in live]
        generation = (state.get("metadata") or {}).get("generation")
        self._last = node_state_status(generation, entries)
        return self._last


def _previous(status: Mapping[str, Any]) -> dict[EntryKey, Mapping[str, Any]]:
    listed = status.get("programs") or []
    found: dict[EntryKey, Mapping[str, Any]] = {}
    for entry in listed if isinstance(listed, list) else []:
        key = entry_key(entry) if isinstance(entry, Mapping) else None
        if key is not None:
            found.setdefault(key, entry)
    return found
