"""The chart's agent.bytecode values, rendered by helm, reach the agent's flags: the keys as a
ConfigMap mounted into it and passed as --bytecode-public-key, the policy and the cache in its
environment; the schema refuses values the agent would."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from node_agent.main import parse_args
from tests.apiserver.chart import CHART, helm, rendered

pytestmark = pytest.mark.apiserver
KEYS_DIR = "/etc/bpfleet/bytecode-keys"


def pem(key: ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey) -> str:
    return (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )


def agent_pod(objects: dict) -> dict:
    return objects[("DaemonSet", "r-bpfleet-agent")]["spec"]["template"]["spec"]


def test_bytecode_values_reach_the_agents_flags(helm_home: Path, tmp_path: Path, monkeypatch):
    keys = [pem(ec.generate_private_key(ec.SECP256R1())), pem(ed25519.Ed25519PrivateKey.generate())]
    values = tmp_path / "values.yaml"
    values.write_text(
        yaml.safe_dump(
            {
                "agent": {
                    "bytecode": {
                        "publicKeys": keys,
                        "requireSignatures": True,
                        "allowedRegistries": ["quay.io", "registry.lan:5000"],
                        "insecureRegistries": ["registry.lan:5000"],
                        "cacheDir": "/var/cache/bpfleet-bytecode",
                        "builtins": "auto",
                    }
                }
            }
        )
    )
    objects = rendered(helm_home, "-f", str(values))
    pod = agent_pod(objects)
    [agent] = pod["containers"]
    config_map = objects[("ConfigMap", "r-bpfleet-agent-bytecode-keys")]
    assert sorted(config_map["data"]) == ["key-0.pem", "key-1.pem"]
    assert agent["args"] == [
        f"--bytecode-public-key={KEYS_DIR}/key-0.pem",
        f"--bytecode-public-key={KEYS_DIR}/key-1.pem",
    ]
    mounts = {m["name"]: m for m in agent["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert mounts["bytecode-keys"] == {"name": "bytecode-keys", "mountPath": KEYS_DIR, "readOnly": True}
    assert volumes["bytecode-keys"]["configMap"]["name"] == "r-bpfleet-agent-bytecode-keys"
    assert mounts["bytecode-cache"]["mountPath"] == "/var/cache/bpfleet-bytecode"
    assert volumes["bytecode-cache"]["hostPath"] == {
        "path": "/var/cache/bpfleet-bytecode",
        "type": "DirectoryOrCreate",
    }

    # What the agent makes of that pod: its files where the ConfigMap puts them, its environment.
    keys_dir = tmp_path / "keys"
    keys_dir.mkdir()
    for name, text in config_map["data"].items():
        (keys_dir / name).write_text(text)
    for env in agent["env"]:
        if "value" in env:
            monkeypatch.setenv(env["name"], env["value"])
    args = parse_args(["--node", "n", *(a.replace(KEYS_DIR, str(keys_dir)) for a in agent["args"])])
    policy = args.bytecode_policy
    assert [k.decode() for k in policy.public_keys] == [k if k.endswith("\n") else k + "\n" for k in keys]
    assert policy.require_signatures is True
    assert policy.allowed_registries == ("quay.io", "registry.lan:5000")
    assert policy.insecure_registries == ("registry.lan:5000",)
    assert str(policy.cache_dir) == "/var/cache/bpfleet-bytecode"
    assert args.builtins_from_bytecode == "auto"


def test_by_default_no_keys_no_registries_and_a_host_cache(helm_home: Path, monkeypatch):
    pod = agent_pod(rendered(helm_home))
    [agent] = pod["containers"]
    env = {e["name"]: e.get("value") for e in agent["env"]}
    assert "args" not in agent and "bytecode-keys" not in {v["name"] for v in pod["volumes"]}
    assert env["BPFLEET_REQUIRE_SIGNED_BYTECODE"] == "false" and env["BPFLEET_BYTECODE_REGISTRIES"] == ""
    for name, value in env.items():
        if value is not None:
            monkeypatch.setenv(name, value)
    args = parse_args(["--node", "n"])
    policy = args.bytecode_policy
    assert args.builtins_from_bytecode == "always"
    assert policy.public_keys == () and not policy.require_signatures and policy.allowed_registries == ()
    assert str(policy.cache_dir) == "/var/lib/bpfleet/bytecode"


@pytest.mark.parametrize(
    ("flags", "error"),
    [
        pytest.param(
            ["--set", "agent.bytecode.requireSignatures=true"], "/agent/bytecode", id="required, no key"
        ),
        pytest.param(
            ["--set", "agent.bytecode.publicKeys[0]=not-a-pem"], "/agent/bytecode/publicKeys/0", id="not PEM"
        ),
        pytest.param(
            ["--set", "agent.bytecode.allowedRegistries[0]=https://quay.io"],
            "/agent/bytecode/allowedRegistries/0",
            id="a URL, not a host",
        ),
        pytest.param(
            ["--set", "agent.bytecode.cacheDir=relative"], "/agent/bytecode/cacheDir", id="relative cache"
        ),
        pytest.param(["--set", "agent.bytecode.keys[0]=x"], "additional properties 'keys'", id="unknown key"),
        pytest.param(["--set", "agent.bytecode.builtins=sometimes"], "/agent/bytecode/builtins", id="mode"),
    ],
)
def test_the_schema_refuses_bad_bytecode_values(helm_home: Path, flags: list[str], error: str):
    result = helm(helm_home, "template", "r", str(CHART), *flags)
    assert result.returncode != 0 and error in result.stderr, result.stderr


def test_the_agent_refuses_bad_bytecode_flags(tmp_path: Path, capsys, monkeypatch):
    monkeypatch.delenv("BPFLEET_BYTECODE_REGISTRIES", raising=False)
    bad_key = tmp_path / "bad.pem"
    bad_key.write_text("-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n")
    for argv, words in (
        (["--require-signed-bytecode"], "needs at least one --bytecode-public-key"),
        (["--bytecode-public-key", str(tmp_path / "missing.pem")], "No such file"),
        (["--bytecode-public-key", str(bad_key)], "--bytecode-public-key"),
        (["--bytecode-registries", "quay.io,https://x"], "'https://x' is not a registry host[:port]"),
    ):
        with pytest.raises(SystemExit):
            parse_args(["--node", "n", *argv])
        assert words in capsys.readouterr().err
