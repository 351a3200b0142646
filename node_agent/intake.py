"""What this node's EbpfNodeState asks for: its entries, each with the EbpfProgramVersion it names.

Both objects are hostile input, whatever the API server let through: every entry is checked against
the trust rules of its kind, and a version is served only if it is the one its contentHash names. An
entry that cannot be read keeps what runs of it (unless it breaks a trust rule); the reason ends up
in its status entry.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from bpfleet_api import reasons
from node_agent.errors import InvalidSpec, TrustViolation
from node_agent.model import EntryKey, NodeProgram, Trust, check_entry, check_hash, version_namespace

log = logging.getLogger(__name__)

# Reads one version object (namespace, name); None when it does not exist. Other errors raise.
Fetch = Callable[[str, str], Mapping[str, Any] | None]

_DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")


@dataclass(frozen=True)
class Entry:
    key: EntryKey
    generation: int
    version: str  # the EbpfProgramVersion's name


@dataclass(frozen=True)
class Refusal:
    """An entry that is not served this pass, and why."""

    reason: str
    message: str
    unload: bool  # it broke a trust rule: what runs of it stops
    transient: bool = False  # the API could not be asked: nothing is said, and it is asked again


@dataclass
class Intake:
    """One pass's reading of the node's spec."""

    entries: dict[EntryKey, Entry] = field(default_factory=dict)
    programs: list[NodeProgram] = field(default_factory=list)
    # Programs (pin namespace, name) whose running versions are kept as they are.
    held: set[tuple[str, str]] = field(default_factory=set)
    refused: dict[EntryKey, Refusal] = field(default_factory=dict)
    # By the (namespace, name) of a NodeProgram (and of its ProgramReport): its entry and version.
    keys: dict[tuple[str, str], EntryKey] = field(default_factory=dict)
    objects: dict[tuple[str, str], Mapping[str, Any]] = field(default_factory=dict)
    # A version could not be read: the next pass should come soon, no watch will say it appeared.
    retry: bool = False


def parse_entries(state: Mapping[str, Any]) -> tuple[list[Entry], list[str]]:
    """The entries of an EbpfNodeState's spec, and what was wrong with those that could not even be
    named. The first of two entries with one key wins (the list-map keys make that impossible
    through the API server; the agent does not rely on it)."""
    spec = state.get("spec") or {}
    listed = spec.get("programs") if isinstance(spec, Mapping) else None
    if listed is None:
        return [], []
    if not isinstance(listed, list):
        return [], ["spec.programs is not a list"]
    entries: dict[EntryKey, Entry] = {}
    problems = []
    for raw in listed:
        try:
            entry = parse_entry(raw)
        except (AttributeError, ValueError) as e:
            problems.append(str(e))
            continue
        entries.setdefault(entry.key, entry)
    return list(entries.values()), problems


def parse_entry(raw: Any) -> Entry:
    """One entry ({kind, namespace, name, generation, version}, a spec item or a placement's spec);
    ValueError or AttributeError when it cannot even be named."""
    key = EntryKey(_text(raw, "kind"), _text(raw, "namespace", empty=True), _text(raw, "name"))
    generation = raw.get("generation", 0)
    if isinstance(generation, bool) or not isinstance(generation, int):
        raise ValueError(f"generation {generation!r} is not an integer")
    return Entry(key, generation, _text(raw, "version"))


def _text(raw: Any, field_name: str, empty: bool = False) -> str:
    value = raw.get(field_name, "" if empty else None)
    if not isinstance(value, str) or (not value and not empty):
        raise ValueError(f"entry field {field_name} must be a string, not {value!r}")
    return value


class VersionReader:
    """Reads entries' versions, each once: a version object never changes (the API refuses an
    update of its spec), so one read by name is good for as long as an entry names it."""

    def __init__(self, fetch: Fetch, trust: Trust) -> None:
        self.fetch, self.trust = fetch, trust
        # Applied to each program parsed: the agent's bytecode of a builtin, say (bytecode_supply).
        self.substitute: Callable[[NodeProgram], NodeProgram] = lambda program: program
        # By (namespace, name): the object, or why it is refused.
        self._cache: dict[tuple[str, str], Mapping[str, Any] | InvalidSpec] = {}
        # What an entry's version parses to, substituted: the same for as long as the entry names
        # the same version at the same generation (parsing hashes sources and objects).
        self._parsed: dict[tuple[EntryKey, int, tuple[str, str]], NodeProgram] = {}

    def read(self, entries: list[Entry]) -> Intake:
        intake = Intake(entries={e.key: e for e in entries})
        wanted: set[tuple[str, str]] = set()
        for entry in entries:
            try:
                check_entry(entry.key)
                where = (version_namespace(entry.key, self.trust), entry.version)
                wanted.add(where)
                program = self._program(entry, where)
            except _Unread as e:
                self._refuse(intake, entry, e.refusal)
                continue
            except (AttributeError, KeyError, TypeError, ValueError, InvalidSpec) as e:
                self._refuse(intake, entry, _refusal(e))
                continue
            intake.programs.append(program)
            intake.keys[(program.namespace, program.name)] = entry.key
            intake.objects[(program.namespace, program.name)] = self._version(where)
        # Versions no entry names any more are dropped: the operator deletes them soon.
        self._cache = {k: v for k, v in self._cache.items() if k in wanted}
        self._parsed = {k: v for k, v in self._parsed.items() if k[2] in wanted}
        return intake

    def _program(self, entry: Entry, where: tuple[str, str]) -> NodeProgram:
        key = (entry.key, entry.generation, where)
        parsed = self._parsed.get(key)
        if parsed is None:
            version = self._version(where)
            parsed = self.substitute(NodeProgram.from_entry(entry.key, entry.generation, version, self.trust))
            self._parsed[key] = parsed
        return parsed

    def _version(self, where: tuple[str, str]) -> Mapping[str, Any]:
        if where in self._cache:
            cached = self._cache[where]
            if isinstance(cached, InvalidSpec):
                raise cached
            return cached
        namespace, name = where
        if not _DNS_LABEL.fullmatch(name):
            raise InvalidSpec(f"version {name!r} is not a version object's name")
        try:
            found = self.fetch(namespace, name)
        except Exception as e:  # the API server unreachable, say: keep what runs, ask again soon
            raise _Unread(Refusal(reasons.AGENT_ERROR, f"reading version {name}: {e}", False, True)) from e
        if found is None:
            message = (
                f"version object {namespace}/{name} not found; what ran of it on this node keeps running"
            )
            raise _Unread(Refusal(reasons.SOURCE_NOT_FOUND, message, False))
        try:
            check_hash(found)  # once: the object never changes
        except InvalidSpec as e:
            self._cache[where] = e
            raise
        self._cache[where] = found
        return found

    def _refuse(self, intake: Intake, entry: Entry, refusal: Refusal) -> None:
        intake.refused[entry.key] = refusal
        if not refusal.unload:
            intake.held.add(entry.key.pins)
        if refusal.transient or refusal.reason == reasons.SOURCE_NOT_FOUND:
            intake.retry = True


class _Unread(Exception):
    def __init__(self, refusal: Refusal) -> None:
        super().__init__(refusal.message)
        self.refusal = refusal


def _refusal(error: Exception) -> Refusal:
    message = f"this agent cannot serve the spec: {error}"
    if isinstance(error, TrustViolation):
        return Refusal(reasons.INVALID_SPEC, message, unload=True)
    if not isinstance(error, InvalidSpec):  # a shape the CRD does not have: say which field
        message = f"this agent cannot serve the spec: {type(error).__name__} {error}"
    return Refusal(reasons.INVALID_SPEC, message + "; what ran of it on this node keeps running", False)
