"""Where a bytecode build's ELF comes from: an image pulled in the pool's build step, or the agent's
own bytecode of a builtin (node_agent/bytecode_supply.py). Pure logic: the pull and the load are
stand-ins; the real ones are tested in tests/registry and tests/kernel."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import pytest

from node_agent import bytecode_supply, errors
from node_agent.bytecode_supply import BuiltinBytecode, FetchingLoad
from node_agent.kernel.backend import Bytecode, LoadedProgram, ProgramBuild, ProgramRef
from node_agent.oci.fetch import BytecodePolicy, ImageSource
from tests.unit.builders import node_program, parsed

BUILTIN_C = "int count(struct __sk_buff *skb) { return 1; }\n"
ELF = b"\x7fELF built from BUILTIN_C"
IMAGE = ImageSource("registry.example:5000/team/counter:v1")


def builtins(tmp_path: Path, mode: str = "always", no_headers: bool = True) -> BuiltinBytecode:
    (tmp_path / "programs").mkdir()
    (tmp_path / "bytecode").mkdir()
    (tmp_path / "programs" / "pod-traffic-counter.c").write_text(BUILTIN_C)
    (tmp_path / "bytecode" / "pod-traffic-counter.bpf.o").write_bytes(ELF)
    return BuiltinBytecode(tmp_path / "programs", tmp_path / "bytecode", mode, no_headers=no_headers)


def builtin_version(text: str = BUILTIN_C, origin: str = "builtin:pod-traffic-counter") -> Any:
    version = node_program(source=text)
    version["spec"]["source"]["origin"] = origin
    return version


def test_a_builtin_runs_from_the_agents_bytecode_on_a_node_without_headers(tmp_path: Path):
    program = builtins(tmp_path).substitute(parsed(builtin_version()))
    assert program.build.bytecode == Bytecode(data=ELF, sha256=hashlib.sha256(ELF).hexdigest())
    assert program.build.source == ""
    # Another build, another version: the ref says so, so a node never mixes them up.
    assert program.ref != parsed(builtin_version()).ref


def test_a_builtin_whose_text_is_not_the_agents_own_stays_c(tmp_path: Path):
    changed = builtins(tmp_path).substitute(parsed(builtin_version(BUILTIN_C + "// another release\n")))
    assert changed.build.bytecode is None and changed.build.source.startswith("int count")


@pytest.mark.parametrize("origin", ["inline", "configMap:shop/src/prog.c", "builtin:../../etc/passwd"])
def test_only_builtins_by_their_plain_name_are_substituted(tmp_path: Path, origin: str):
    program = builtins(tmp_path).substitute(parsed(builtin_version(origin=origin)))
    assert program.build.bytecode is None


def test_with_headers_auto_compiles_the_c_and_always_takes_the_bytecode(tmp_path: Path):
    assert (
        builtins(tmp_path, "auto", no_headers=False).substitute(parsed(builtin_version())).build.bytecode
        is None
    )
    for mode, expected in (("always", True), ("never", False)):
        where = tmp_path / mode
        where.mkdir()
        program = builtins(where, mode, no_headers=False).substitute(parsed(builtin_version()))
        assert (program.build.bytecode is not None) is expected


def test_a_builtin_without_a_built_object_stays_c(tmp_path: Path):
    supply = builtins(tmp_path)
    (tmp_path / "bytecode" / "pod-traffic-counter.bpf.o").unlink()
    assert supply.substitute(parsed(builtin_version())).build.bytecode is None


def test_an_unknown_mode_is_refused(tmp_path: Path):
    with pytest.raises(ValueError, match="sometimes"):
        BuiltinBytecode(tmp_path, tmp_path, "sometimes")


class Recorder:
    def __init__(self) -> None:
        self.loaded: list[ProgramBuild] = []
        self.pulls: list[dict[str, Any]] = []

    def load(self, ref: ProgramRef, build: ProgramBuild, previous: ProgramRef | None) -> LoadedProgram:
        self.loaded.append(build)
        return LoadedProgram(ref, 7, "/pins")

    def fetch(self, source: ImageSource, **kwargs: Any) -> bytes:
        self.pulls.append({"source": source, **kwargs})
        return ELF


def image_build(cluster: bool = False, sha256: str | None = None) -> ProgramBuild:
    attach = parsed(node_program()).build.attach
    return ProgramBuild("", "count", attach, cluster=cluster, bytecode=Bytecode(image=IMAGE, sha256=sha256))


def test_an_image_is_pulled_with_the_programs_namespace_then_loaded_with_its_elf(monkeypatch):
    recorder = Recorder()
    monkeypatch.setattr(bytecode_supply, "fetch_image", recorder.fetch)
    policy = BytecodePolicy(allowed_registries=("registry.example:5000",))
    step = FetchingLoad(recorder.load, policy, lambda _ns, _name: None, system_namespace="bpfleet-system")
    step(ProgramRef("shop", "counter", "v1"), image_build(), None)
    step(ProgramRef("_cluster", "audit", "v1"), image_build(cluster=True), None)
    assert [(p["namespace"], p["cluster"], p["function"]) for p in recorder.pulls] == [
        ("shop", False, "count"),
        ("bpfleet-system", True, "count"),  # a ClusterEbpfProgram's secrets live with its versions
    ]
    assert all(p["policy"] is policy for p in recorder.pulls)
    assert [b.bytecode.data for b in recorder.loaded if b.bytecode] == [ELF, ELF]


def test_a_pulled_elf_that_is_not_the_pinned_one_is_refused_before_any_load(monkeypatch):
    recorder = Recorder()
    monkeypatch.setattr(bytecode_supply, "fetch_image", recorder.fetch)
    step = FetchingLoad(recorder.load, BytecodePolicy(), lambda _ns, _name: None)
    with pytest.raises(errors.SourceHashMismatch, match=r"expected sha256 0{64}, got [0-9a-f]{64}"):
        step(ProgramRef("shop", "counter", "v1"), image_build(sha256="0" * 64), None)
    assert recorder.loaded == []


def test_c_and_inline_bytecode_go_straight_to_the_load(monkeypatch):
    recorder = Recorder()
    monkeypatch.setattr(bytecode_supply, "fetch_image", recorder.fetch)
    step = FetchingLoad(recorder.load, BytecodePolicy(), lambda _ns, _name: None)
    c = parsed(node_program()).build
    step(ProgramRef("shop", "c", "v1"), c, None)
    inline = ProgramBuild("", "count", c.attach, bytecode=Bytecode(data=ELF))
    step(ProgramRef("shop", "elf", "v1"), inline, None)
    assert recorder.pulls == [] and recorder.loaded == [c, inline]
