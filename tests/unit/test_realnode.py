"""The real node's pure parts: its process bookkeeping (with real processes), the settings this
kind of host needs in containerd's and kubelet's configs, and what teardown considers its own."""

from __future__ import annotations

import os
import subprocess
import tomllib
from pathlib import Path

import pytest

from e2e.controlplane import Pki
from e2e.realnode import containerd, kubelet, network, teardown
from e2e.realnode.cluster import helm_values
from e2e.realnode.daemons import Daemon, pids_with_argument
from e2e.realnode.images import Images
from e2e.realnode.layout import Layout


@pytest.fixture
def daemon(tmp_path: Path) -> Daemon:
    return Daemon("test-daemon", tmp_path / "pids", tmp_path / "logs", marker=str(tmp_path), binary="sh")


def test_a_daemon_is_found_by_pid_file_and_marker_and_stopped_with_its_group(daemon: Daemon) -> None:
    # A child no other test run has: another run's on this host must not make this one fail.
    child = f"sleep {300 + os.getpid() % 100_000}"
    pid = daemon.start(["sh", "-c", f"{child} & wait", str(daemon.pid_dir.parent)])
    try:
        assert daemon.pid() == pid and daemon.running()
        assert pid in pids_with_argument("sh", daemon.marker)
        daemon.stop(timeout=5)
        assert not daemon.running() and not daemon.pid_file.exists()
        assert pids_with_argument("sh", daemon.marker) == []
        # Its child went with the group.
        assert subprocess.run(["pgrep", "-f", f"^{child}$"], capture_output=True).stdout == b""
    finally:
        daemon.stop(timeout=1)


def test_a_pid_file_naming_another_process_is_not_ours(daemon: Daemon) -> None:
    other = subprocess.Popen(["sh", "-c", "sleep 300"])  # no marker in its command line
    try:
        daemon.pid_dir.mkdir(parents=True)
        daemon.pid_file.write_text(f"{other.pid}\n")
        assert daemon.pid() is None
        daemon.stop(timeout=1)
        assert other.poll() is None  # left alone
    finally:
        other.kill()
        other.wait()


def test_containerd_config_has_what_this_host_needs(tmp_path: Path) -> None:
    layout = Layout(tmp_path / "state", run=tmp_path / "run", lib=tmp_path / "lib")
    config = tomllib.loads(containerd.config(layout, "localhost/bpfleet/pause:x"))
    cri = config["plugins"]["io.containerd.grpc.v1.cri"]
    assert cri["restrict_oom_score_adj"] is True
    assert cri["netns_mounts_under_state_dir"] is True
    assert cri["sandbox_image"] == "localhost/bpfleet/pause:x"
    assert cri["cni"]["bin_dir"] == "/usr/lib/cni"
    assert cri["containerd"]["runtimes"]["runc"]["options"]["SystemdCgroup"] is False
    for key in ("root", "state"):
        assert config[key].startswith(str(tmp_path))
    assert config["grpc"]["address"] == str(layout.containerd_socket)


def test_kubelet_config_has_what_a_hybrid_host_without_systemd_needs(tmp_path: Path) -> None:
    layout = Layout(tmp_path / "state", run=tmp_path / "run", lib=tmp_path / "lib")
    config = kubelet.configuration(layout, Pki(tmp_path / "pki"))
    assert (config["cgroupDriver"], config["failCgroupV1"], config["failSwapOn"]) == (
        "cgroupfs",
        False,
        False,
    )
    assert config["cgroupRoot"] != "/"  # its own, apart from other kubepods-like trees here
    assert config["healthzBindAddress"] == "127.0.0.1" and config["readOnlyPort"] == 0
    assert config["authentication"]["anonymous"]["enabled"] is False
    assert config["containerRuntimeEndpoint"] == f"unix://{layout.containerd_socket}"


def test_the_chart_values_point_the_agent_at_the_nodes_cgroups_and_its_own_pins() -> None:
    args = helm_values(Images("p:1", "a:1", "localhost/bpfleet/operator:abc", "localhost/bpfleet/agent:def"))
    values = dict(arg.split("=", 1) for arg in args[1::2])
    assert (
        values["agent.image.repository"] == "localhost/bpfleet/agent" and values["agent.image.tag"] == "def"
    )
    assert values["agent.kubeletCgroupRoot"] == "/sys/fs/cgroup/unified/bpfleet-realnode"
    assert values["agent.bpffsRoot"] == "/sys/fs/bpf/bpfleet-realnode"


def test_an_image_tag_of_only_digits_is_passed_to_helm_as_a_string() -> None:
    # Tags are content hashes: "315137780639" once made helm --set hand the chart a number.
    args = helm_values(Images("p:1", "a:1", "localhost/bpfleet/operator:315137780639", "localhost/x:0123"))
    flags = dict(zip(args[1::2], args[0::2], strict=True))
    assert flags["operator.image.tag=315137780639"] == "--set-string"
    assert flags["agent.image.tag=0123"] == "--set-string"


def test_the_cni_config_uses_our_bridge_and_our_address_store(tmp_path: Path) -> None:
    layout = Layout(tmp_path / "state", run=tmp_path / "run", lib=tmp_path / "lib")
    [bridge] = network.conflist(layout)["plugins"]  # type: ignore[misc]
    assert bridge["bridge"] == network.BRIDGE and bridge["ipMasq"] is False
    assert bridge["ipam"]["dataDir"] == str(layout.cni_data_dir)


def test_mounts_under_a_directory_are_its_own_only(tmp_path: Path) -> None:
    mountinfo = tmp_path / "mountinfo"
    mountinfo.write_text(
        "1 0 0:1 / /run/bpfleet-realnode/a rw - tmpfs x rw\n"
        "2 1 0:2 / /run/bpfleet-realnode/a/b rw - tmpfs x rw\n"
        "3 0 0:3 / /run/bpfleet-realnode-other rw - tmpfs x rw\n"
        "4 0 0:4 / /run rw - tmpfs x rw\n"
    )
    found = teardown.mounts_under(Path("/run/bpfleet-realnode"), mountinfo)
    assert found == ["/run/bpfleet-realnode/a/b", "/run/bpfleet-realnode/a"]  # deepest first
