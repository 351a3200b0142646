"""Where a bytecode build's ELF comes from before the compile worker loads it.

- An image source is pulled here, in the compile pool's thread (network I/O never holds up a pass),
  under the agent's bytecode policy (node_agent/oci): registry allowlist, signatures, caps.
- A builtin runs from the agent's own CO-RE build of it (`make bytecode`) instead of from its C
  source: loading takes milliseconds where a compile takes hundreds, and needs neither LLVM nor
  kernel headers. By default on every node ("always"); "auto" only on a node without headers, where
  BCC cannot compile; "never" compiles the C. It does so only when the version's C text is byte for
  byte the agent's own copy of that builtin, so the object loaded is the build of exactly the source
  the version names; otherwise (another agent release's source, a missing object) the C is compiled.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from bpfleet_api import names
from node_agent.kernel.backend import Bytecode, LoadedProgram, ProgramBuild, ProgramRef
from node_agent.model import NodeProgram
from node_agent.oci.fetch import BytecodePolicy, ReadSecret, check_sha256, fetch_image

log = logging.getLogger(__name__)

Load = Callable[[ProgramRef, ProgramBuild, "ProgramRef | None"], LoadedProgram]
BUILTIN_ORIGIN = "builtin:"
# When builtins run from bytecode: only where BCC cannot compile (no kernel headers), or always.
BUILTINS_FROM_BYTECODE = ("auto", "always", "never")


@dataclass
class FetchingLoad:
    """The pool's build step: pulls an image's ELF first, then loads the build with it."""

    load: Load
    policy: BytecodePolicy
    read_secret: ReadSecret
    system_namespace: str = dataclasses.field(default_factory=names.system_namespace)

    def __call__(self, ref: ProgramRef, build: ProgramBuild, previous: ProgramRef | None) -> LoadedProgram:
        bytecode = build.bytecode
        if bytecode is not None and bytecode.data is None and bytecode.image is not None:
            # A ClusterEbpfProgram's pull secret lives where its versions do: the system namespace.
            namespace = self.system_namespace if build.cluster else ref.namespace
            data = fetch_image(
                bytecode.image,
                namespace=namespace,
                cluster=build.cluster,
                policy=self.policy,
                read_secret=self.read_secret,
                function=build.function,
            )
            check_sha256(data, bytecode.sha256)
            build = dataclasses.replace(build, bytecode=dataclasses.replace(bytecode, data=data))
        return self.load(ref, build, previous)


class BuiltinBytecode:
    """The agent's own bytecode of its builtins, by name, with the sha256 of the C each was built from."""

    def __init__(
        self, programs_dir: Path, bytecode_dir: Path, mode: str = "always", no_headers: bool = False
    ) -> None:
        if mode not in BUILTINS_FROM_BYTECODE:
            raise ValueError(f"{mode!r} is not one of {', '.join(BUILTINS_FROM_BYTECODE)}")
        self.programs_dir, self.bytecode_dir = programs_dir, bytecode_dir
        self.active = mode == "always" or (mode == "auto" and no_headers)
        self._objects: dict[str, tuple[str, bytes] | None] = {}

    def substitute(self, program: NodeProgram) -> NodeProgram:
        """`program` built from the agent's bytecode of its builtin, when that applies; else as is."""
        if not self.active or program.build.bytecode is not None:
            return program
        if not program.origin.startswith(BUILTIN_ORIGIN):
            return program
        found = self._object(program.origin[len(BUILTIN_ORIGIN) :])
        if found is None or found[0] != hashlib.sha256(program.build.source.encode()).hexdigest():
            return program  # another source than ours (another agent version's, say): C it is
        elf = found[1]
        bytecode = Bytecode(data=elf, sha256=hashlib.sha256(elf).hexdigest())
        build = dataclasses.replace(program.build, source="", bytecode=bytecode)
        return dataclasses.replace(program, build=build)

    def _object(self, name: str) -> tuple[str, bytes] | None:
        if name not in self._objects:
            self._objects[name] = self._read(name)
        return self._objects[name]

    def _read(self, name: str) -> tuple[str, bytes] | None:
        if not name.replace("-", "").isalnum():
            return None
        try:
            source = (self.programs_dir / f"{name}.c").read_text().encode()  # as the operator reads it
            elf = (self.bytecode_dir / f"{name}.bpf.o").read_bytes()
        except OSError as e:
            log.warning("no bytecode of builtin", extra={"builtin": name, "error": str(e)})
            return None
        return hashlib.sha256(source).hexdigest(), elf
