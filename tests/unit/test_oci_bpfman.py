"""bpfman's image format, read from hostile bytes: labels, the object at the layer's root, caps."""

from __future__ import annotations

import gzip
import io
import json
import tarfile

import pytest

from node_agent.errors import FunctionNotFound, ImagePullFailed
from node_agent.oci.bpfman import labels_from_config, object_from_layer

# The first bytes of a little-endian relocatable ELF for EM_BPF (247): enough for the checks here.
BPF_ELF = (
    b"\x7fELF\x02\x01\x01" + b"\0" * 9 + (1).to_bytes(2, "little") + (247).to_bytes(2, "little") + b"\0" * 100
)
X86_ELF = BPF_ELF[:18] + (62).to_bytes(2, "little") + BPF_ELF[20:]


def config(labels: dict[str, str]) -> bytes:
    return json.dumps({"architecture": "amd64", "os": "linux", "config": {"Labels": labels}}).encode()


def layer(files: dict[str, bytes], *, compress: bool = True, dirs: tuple[str, ...] = ()) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tar:
        for name in dirs:
            info = tarfile.TarInfo(name)
            info.type = tarfile.DIRTYPE
            tar.addfile(info)
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return gzip.compress(out.getvalue()) if compress else out.getvalue()


def test_programs_and_maps_labels_list_the_functions():
    labels = labels_from_config(
        config({"io.ebpf.programs": '{"pass": "xdp", "counter": "tc"}', "io.ebpf.maps": '{"stats": "array"}'})
    )
    assert labels.programs == {"pass": "xdp", "counter": "tc"} and labels.maps == {"stats": "array"}
    labels.require("counter")
    with pytest.raises(
        FunctionNotFound, match=r"'other' is not among the 2 programs of the image's io.ebpf.programs"
    ):
        labels.require("other")


def test_the_older_single_program_labels_are_read():
    labels = labels_from_config(
        config(
            {"io.ebpf.bpf_function_name": "pass", "io.ebpf.program_type": "xdp", "io.ebpf.filename": "p.o"}
        )
    )
    assert labels.programs == {"pass": "xdp"} and labels.filename == "p.o"
    assert labels_from_config(config({"io.ebpf.program_name": "cnt"})).programs == {"cnt": ""}


@pytest.mark.parametrize(
    ("raw", "words"),
    [
        (config({}), "not a bpfman bytecode image"),
        (config({"io.ebpf.programs": "[1, 2]"}), "JSON object of strings"),
        (config({"io.ebpf.programs": "{not json"}), "not JSON"),
        (config({"io.ebpf.programs": '{"a": 1}'}), "JSON object of strings"),
        (config({"io.ebpf.programs": "{}" + " " * 70000}), "over"),
        (b"\xff\xfe", "not a JSON image configuration"),
        (b"[]", "not a JSON image configuration"),
    ],
)
def test_configs_that_are_not_bpfman_images_are_refused(raw, words):
    with pytest.raises(ImagePullFailed, match=words):
        labels_from_config(raw)


@pytest.mark.parametrize("compress", [True, False])
def test_the_object_at_the_layer_root_is_returned(compress):
    data = layer(
        {"./prog.o": BPF_ELF, "README": b"x", "sub/other.o": X86_ELF}, compress=compress, dirs=("sub",)
    )
    assert object_from_layer(data, filename=None, elf_cap=1 << 20, unpacked_cap=1 << 22) == BPF_ELF


def test_the_filename_label_picks_among_several_objects():
    data = layer({"a.o": BPF_ELF, "b.o": BPF_ELF + b"b"})
    assert object_from_layer(data, filename="b.o", elf_cap=1 << 20, unpacked_cap=1 << 22) == BPF_ELF + b"b"
    with pytest.raises(ImagePullFailed, match=r"one \*.o file .* found 2"):
        object_from_layer(data, filename=None, elf_cap=1 << 20, unpacked_cap=1 << 22)
    with pytest.raises(ImagePullFailed, match=r"'c.o' at its root; found 0"):
        object_from_layer(data, filename="c.o", elf_cap=1 << 20, unpacked_cap=1 << 22)


def test_objects_that_are_not_bpf_are_refused():
    for bad in (X86_ELF, b"#!/bin/sh\n", b""):
        with pytest.raises(ImagePullFailed, match="not a little-endian BPF ELF"):
            object_from_layer(layer({"p.o": bad}), filename=None, elf_cap=1 << 20, unpacked_cap=1 << 22)


def test_an_oversized_object_is_refused_before_it_is_read():
    data = layer({"p.o": BPF_ELF + b"\0" * 5000})
    with pytest.raises(ImagePullFailed, match="over the 4096-byte limit"):
        object_from_layer(data, filename=None, elf_cap=4096, unpacked_cap=1 << 22)


def test_a_gzip_bomb_stops_at_the_unpacked_cap():
    # 64 MiB of zeros compress to about 64 KiB: the reader must stop at the cap, not inflate it all.
    bomb = layer({"pad": b"\0" * (64 << 20), "p.o": BPF_ELF})
    assert len(bomb) < 1 << 20
    with pytest.raises(ImagePullFailed, match="unpacks to over 1048576 bytes"):
        object_from_layer(bomb, filename=None, elf_cap=1 << 20, unpacked_cap=1 << 20)


@pytest.mark.parametrize(
    "garbage", [b"\x1f\x8bnot gzip at all", b"plain garbage" * 100, gzip.compress(b"not a tar")]
)
def test_a_layer_that_is_not_a_tar_is_refused(garbage):
    with pytest.raises(ImagePullFailed):
        object_from_layer(garbage, filename=None, elf_cap=1 << 20, unpacked_cap=1 << 22)
