"""The agent's view of its API objects: plain values parsed once from the raw dicts."""

from __future__ import annotations

import functools
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from bpfleet_api import names, selectors, versions
from node_agent import version_source
from node_agent.errors import InvalidSpec, TrustViolation
from node_agent.kernel import map_memory
from node_agent.kernel.attach_types import (
    FILTERED_SCOPES,
    HOST_SCOPES,
    PER_BINARY_FILTERED,
    UnknownAttach,
    kernel_attach,
)
from node_agent.kernel.backend import ProgramBuild, ProgramRef

# The ProgramRef namespace (and pin directory) of ClusterEbpfPrograms: no Kubernetes namespace
# contains '_', so it never meets an EbpfProgram's.
CLUSTER_PINS = names.CLUSTER_PIN_NAMESPACE
DEFAULT_MAX_MAP_BYTES = map_memory.DEFAULT_MAX_MAP_BYTES
RESERVED_PREFIX = "bpfleet_"  # functions of the agent's own (the pod filter's entry point)


def _define_value(value: Any) -> str:
    # Integers go in as they are; strings as C string literals. The CRD schema restricts both,
    # and json.dumps escapes what is left, so a parameter can never inject code.
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, int):
        return str(value)
    return json.dumps(str(value))


def program_version(build: ProgramBuild) -> str:
    """A short hash of everything that goes into the compile or the attachment: a new version means
    a new program."""
    fields: list[Any] = [
        build.source,
        build.function,
        build.attach.prog_type,
        build.attach.attach_type,
        build.attach.target,
        build.attach.side,
        build.attach.flags,
        build.defines,
    ]
    fields += version_source.version_fields(build.bytecode)  # nothing for C: their versions stay
    if build.attach.retprobe and build.attach.scope != PER_BINARY_FILTERED:
        fields.append("retprobe")  # a Kretprobe is another program than the Kprobe on the same function
    if build.attach.scope == PER_BINARY_FILTERED:
        # Only for uprobes, so that the versions of every other program stay what they were.
        attach = build.attach
        fields.append([attach.symbol, attach.offset, attach.retprobe, attach.container])
    if build.attach.scope in HOST_SCOPES:
        fields.append(build.attach.scope)  # unfiltered: another program than the same hook for pods
    if build.max_map_bytes not in (0, DEFAULT_MAX_MAP_BYTES):  # 0 also means the default
        fields.append(["maxMapBytes", build.max_map_bytes])  # another cap, another check
    if build.attach.scope in FILTERED_SCOPES:
        # Built with the enforced pod filter (bpfleet_entry in front): nodes rebuild what they run.
        fields.append("filter-entry")
    return hashlib.sha256(json.dumps(fields).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Trust:
    """What entries are checked against: where a ClusterEbpfProgram's versions may live, and the
    map memory cap of programs that name none."""

    system_namespace: str = field(default_factory=names.system_namespace)
    max_map_bytes: int = DEFAULT_MAX_MAP_BYTES


@dataclass(frozen=True)
class NodeProgram:
    """One EbpfNodeState entry of this node, with the version it names."""

    namespace: str
    name: str
    program: str  # the EbpfProgram or ClusterEbpfProgram it was made from
    generation: int
    build: ProgramBuild
    attach_type: str
    pod_selector: Mapping[str, Any]
    kind: str = names.PROGRAM_KIND
    scope: str = "Pods"
    # The namespaces whose pods it may select: its own for an EbpfProgram, whatever spec says.
    pod_namespaces: tuple[str, ...] = ()
    origin: str = ""  # the version's source.origin: builtin:<name>, inline, configMap:..., image:...

    @property
    def cluster(self) -> bool:
        return self.kind == names.CLUSTER_PROGRAM_KIND

    @functools.cached_property
    def ref(self) -> ProgramRef:
        # Cached: the version hashes the whole source, and a pass asks for it many times.
        pins = CLUSTER_PINS if self.cluster else self.namespace
        return ProgramRef(pins, self.program, program_version(self.build))

    def selects(self, pod: Pod) -> bool:
        return (
            self.scope == "Pods"
            and pod.namespace in self.pod_namespaces
            and pod.schedulable_for_programs
            and selectors.matches(self.pod_selector, pod.labels)
        )

    @classmethod
    def from_entry(
        cls, entry: EntryKey, generation: int, version: Mapping[str, Any], trust: Trust | None = None
    ) -> NodeProgram:
        """Parses the EbpfProgramVersion an EbpfNodeState entry names, whose contentHash the caller
        checked (check_hash: once per object, it never changes). Raises TrustViolation when the pair
        breaks a trust rule, InvalidSpec when the version cannot be served (KeyError or TypeError
        when it does not have the shape of the CRD at all)."""
        trust = trust or Trust()
        meta, spec = version["metadata"], version["spec"]
        kind = entry.kind
        namespace = version_namespace(entry, trust)
        if meta.get("namespace") != namespace:
            raise TrustViolation(f"a {kind}'s version is read from namespace {namespace!r} only")
        if (spec.get("programKind") or names.PROGRAM_KIND) != kind:
            raise TrustViolation(f"the version is of a {spec.get('programKind')!r}, the entry of a {kind}")
        if spec.get("programName", entry.name) != entry.name:
            raise InvalidSpec(f"the version is of program {spec.get('programName')!r}, not {entry.name!r}")
        scope = spec.get("scope") or "Pods"
        _check_trust(namespace, kind, scope, spec, trust)
        try:
            attach = kernel_attach(spec["attach"], scope)
        except UnknownAttach as e:
            raise InvalidSpec(str(e)) from None
        params = spec.get("parameters") or {}
        if not isinstance(params, Mapping):
            raise InvalidSpec("parameters must be a map of names to values")
        text, bytecode = version_source.parse(spec["source"])
        build = ProgramBuild(
            source=text,
            function=spec["function"],
            attach=attach,
            defines=tuple(sorted((k, _define_value(v)) for k, v in params.items())),
            cluster=kind == names.CLUSTER_PROGRAM_KIND,
            max_map_bytes=_max_map_bytes(spec, trust),
            bytecode=bytecode,
        )
        if not isinstance(build.source, str) or not isinstance(build.function, str):
            raise InvalidSpec("source.text and function must be strings")
        if scope == "Node":
            pod_namespaces: tuple[str, ...] = ()
        elif kind == names.CLUSTER_PROGRAM_KIND:
            listed = spec.get("namespaces") or []
            if not isinstance(listed, list) or not all(isinstance(n, str) for n in listed):
                raise InvalidSpec("namespaces must be a list of namespace names")
            pod_namespaces = tuple(listed)
        else:
            pod_namespaces = (namespace,)  # its own, whatever spec.namespaces says
        return cls(
            namespace=namespace,
            # The version object's name: unique per (namespace, kind), unlike the program's name.
            name=meta["name"],
            program=entry.name,
            generation=generation,
            build=build,
            attach_type=spec["attach"]["type"],
            pod_selector=spec.get("podSelector") or {},
            kind=kind,
            scope=scope,
            pod_namespaces=pod_namespaces,
            origin=str(spec["source"].get("origin") or ""),
        )


@dataclass(frozen=True, order=True)
class EntryKey:
    """An EbpfNodeState entry's identity: its list-map keys."""

    kind: str
    namespace: str  # "" for a ClusterEbpfProgram
    name: str

    @property
    def pins(self) -> tuple[str, str]:
        """The ProgramRef.program of what runs of it."""
        return (CLUSTER_PINS if self.kind == names.CLUSTER_PROGRAM_KIND else self.namespace, self.name)


def check_hash(version: Mapping[str, Any]) -> None:
    """A version is served only as what its contentHash names: a changed one is refused."""
    spec = version.get("spec")
    if not isinstance(spec, Mapping) or not versions.matches(spec):
        raise InvalidSpec("version object does not match its hash")


def check_entry(entry: EntryKey) -> None:
    """The trust rules an entry breaks by its keys alone."""
    if entry.kind not in names.PROGRAM_KINDS:
        raise TrustViolation(f"kind {entry.kind!r} is neither EbpfProgram nor ClusterEbpfProgram")
    if entry.kind == names.CLUSTER_PROGRAM_KIND and entry.namespace:
        raise TrustViolation("a ClusterEbpfProgram entry has no namespace")
    if entry.kind == names.PROGRAM_KIND and not entry.namespace:
        raise TrustViolation("an EbpfProgram entry names its namespace")


def version_namespace(entry: EntryKey, trust: Trust) -> str:
    """Where the version of an entry is read: an EbpfProgram's own namespace, whatever else says;
    a ClusterEbpfProgram's from the system namespace, where tenants write nothing."""
    check_entry(entry)
    return trust.system_namespace if entry.kind == names.CLUSTER_PROGRAM_KIND else entry.namespace


def _check_trust(namespace: str, kind: str, scope: str, spec: Mapping[str, Any], trust: Trust) -> None:
    """The agent's own check of what only a ClusterEbpfProgram may do, whatever the API server let
    through: a namespaced program reaches its own namespace's pods and nothing else."""
    if kind not in (names.PROGRAM_KIND, names.CLUSTER_PROGRAM_KIND):
        raise TrustViolation(f"programKind {kind!r} is neither EbpfProgram nor ClusterEbpfProgram")
    if scope not in ("Pods", "Node"):
        raise TrustViolation(f"scope {scope!r} is neither Pods nor Node")
    if str(spec.get("function", "")).startswith(RESERVED_PREFIX):
        raise TrustViolation(f"function names starting with {RESERVED_PREFIX} are reserved for the agent")
    if kind == names.CLUSTER_PROGRAM_KIND:
        if namespace != trust.system_namespace:
            raise TrustViolation(
                f"a ClusterEbpfProgram's versions live in {trust.system_namespace}, not in {namespace}"
            )
        return
    attach = spec.get("attach") or {}
    if scope == "Node":
        raise TrustViolation(
            "scope Node reaches the whole node, not only this namespace's pods: use a ClusterEbpfProgram"
        )
    if attach.get("type") in ("Kprobe", "Kretprobe"):
        raise TrustViolation(
            f"{attach['type']} traces the kernel for every process of the node: use a ClusterEbpfProgram"
        )
    if attach.get("side") == "Host":
        raise TrustViolation(
            "attach.side Host reaches the node's side of the pod network: use a ClusterEbpfProgram"
        )


def _max_map_bytes(spec: Mapping[str, Any], trust: Trust) -> int:
    value = spec.get("maxMapBytes")
    if value is None:
        return trust.max_map_bytes
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise InvalidSpec(f"maxMapBytes must be a positive integer, not {value!r}")
    return value


@dataclass(frozen=True)
class Pod:
    namespace: str
    name: str
    uid: str
    labels: Mapping[str, str]
    qos_class: str | None
    phase: str
    deleting: bool
    # Started containers: name -> container id without its runtime scheme ("containerd://").
    containers: Mapping[str, str] = field(default_factory=dict)

    @property
    def schedulable_for_programs(self) -> bool:
        """Pods that still run or are about to: kubelet makes the cgroup before containers start."""
        return not self.deleting and self.phase not in ("Succeeded", "Failed")

    @classmethod
    def from_object(cls, obj: Mapping[str, Any]) -> Pod:
        meta, status = obj["metadata"], obj.get("status") or {}
        return cls(
            namespace=meta["namespace"],
            name=meta["name"],
            uid=meta["uid"],
            labels=meta.get("labels") or {},
            qos_class=status.get("qosClass"),
            phase=status.get("phase") or "Pending",
            deleting=bool(meta.get("deletionTimestamp")),
            containers={
                c["name"]: c["containerID"].rpartition("://")[2]
                for c in status.get("containerStatuses") or []
                if c.get("name") and c.get("containerID")
            },
        )
