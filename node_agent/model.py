"""The agent's view of its API objects: plain values parsed once from the raw dicts."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from bpfleet_api import names
from node_agent.kernel.attach_types import FILTERED_SCOPES, PER_BINARY_FILTERED, kernel_attach
from node_agent.kernel.backend import ProgramBuild, ProgramRef


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
    if build.attach.retprobe and build.attach.scope != PER_BINARY_FILTERED:
        fields.append("retprobe")  # a Kretprobe is another program than the Kprobe on the same function
    if build.attach.scope == PER_BINARY_FILTERED:
        # Only for uprobes, so that the versions of every other program stay what they were.
        attach = build.attach
        fields.append([attach.symbol, attach.offset, attach.retprobe, attach.container])
    if build.attach.scope in FILTERED_SCOPES:
        # Built with the enforced pod filter (bpfleet_entry in front): nodes rebuild what they run.
        fields.append("filter-entry")
    return hashlib.sha256(json.dumps(fields).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class NodeProgram:
    """One EbpfNodeProgram addressed to this node."""

    namespace: str
    name: str
    program: str  # the EbpfProgram it was made from
    generation: int
    build: ProgramBuild
    attach_type: str
    pod_selector: Mapping[str, Any]
    deleting: bool
    finalizers: tuple[str, ...] = ()
    status: Mapping[str, Any] = field(default_factory=dict)

    @property
    def ref(self) -> ProgramRef:
        return ProgramRef(self.namespace, self.program, program_version(self.build))

    @classmethod
    def from_object(cls, obj: Mapping[str, Any]) -> NodeProgram:
        meta, spec = obj["metadata"], obj["spec"]
        params = spec.get("parameters") or {}
        build = ProgramBuild(
            source=spec["source"]["text"],
            function=spec["function"],
            attach=kernel_attach(spec["attach"]),
            defines=tuple(sorted((k, _define_value(v)) for k, v in params.items())),
        )
        return cls(
            namespace=meta["namespace"],
            name=meta["name"],
            program=spec.get("programName") or meta["labels"][names.PROGRAM_LABEL],
            generation=int(meta.get("generation") or 0),
            build=build,
            attach_type=spec["attach"]["type"],
            pod_selector=spec.get("podSelector") or {},
            deleting=bool(meta.get("deletionTimestamp")),
            finalizers=tuple(meta.get("finalizers") or ()),
            status=obj.get("status") or {},
        )


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
