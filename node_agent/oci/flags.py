"""The agent's bytecode flags (each with an environment variable, as the chart sets them) and the
BytecodePolicy they make."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from node_agent.oci.cosign import load_public_keys
from node_agent.oci.fetch import BytecodePolicy
from node_agent.oci.reference import InvalidReference, parse

DEFAULT_CACHE_DIR = Path("/var/lib/bpfleet/bytecode")


def _hosts(value: str) -> tuple[str, ...]:
    return tuple(host.strip() for host in value.split(",") if host.strip())


def add_arguments(parser: argparse.ArgumentParser) -> None:
    env = os.environ.get
    parser.add_argument(
        "--bytecode-public-key",
        action="append",
        type=Path,
        default=[],
        metavar="PEM_FILE",
        help="a cosign public key (PEM: ECDSA P-256, Ed25519 or RSA) that bytecode images may be "
        "signed with; repeatable. With none, signatures are not checked",
    )
    parser.add_argument(
        "--require-signed-bytecode",
        action="store_true",
        default=env("BPFLEET_REQUIRE_SIGNED_BYTECODE", "").lower() in ("1", "true", "yes"),
        help="refuse bytecode images without a signature that verifies against a configured key "
        "(SignatureInvalid) (env BPFLEET_REQUIRE_SIGNED_BYTECODE)",
    )
    parser.add_argument(
        "--bytecode-registries",
        type=_hosts,
        default=_hosts(env("BPFLEET_BYTECODE_REGISTRIES", "")),
        metavar="HOST[:PORT],...",
        help="registries namespaced EbpfPrograms may pull bytecode images from; empty: none "
        "(ClusterEbpfPrograms may use any) (env BPFLEET_BYTECODE_REGISTRIES)",
    )
    parser.add_argument(
        "--bytecode-insecure-registries",
        type=_hosts,
        default=_hosts(env("BPFLEET_BYTECODE_INSECURE_REGISTRIES", "")),
        metavar="HOST[:PORT],...",
        help="registries reached over plain http (loopback ones always are) "
        "(env BPFLEET_BYTECODE_INSECURE_REGISTRIES)",
    )
    parser.add_argument(
        "--bytecode-cache-dir",
        type=Path,
        default=Path(env("BPFLEET_BYTECODE_CACHE_DIR") or DEFAULT_CACHE_DIR),
        help="where pulled bytecode is cached by image digest (env BPFLEET_BYTECODE_CACHE_DIR)",
    )


def policy(args: argparse.Namespace, parser: argparse.ArgumentParser) -> BytecodePolicy:
    """The policy of parsed flags; bad keys or hosts are the admin's error, reported at start."""
    pems = []
    for path in args.bytecode_public_key:
        try:
            pems.append(path.read_bytes())
        except OSError as err:
            parser.error(f"--bytecode-public-key {path}: {err.strerror}")
    try:
        load_public_keys(tuple(pems))
    except (ValueError, TypeError) as err:
        parser.error(f"--bytecode-public-key: {err}")
    if args.require_signed_bytecode and not pems:
        parser.error("--require-signed-bytecode needs at least one --bytecode-public-key")
    for host in (*args.bytecode_registries, *args.bytecode_insecure_registries):
        try:
            if parse(f"{host}/probe").registry != host:
                raise InvalidReference("not host[:port]")
        except InvalidReference:
            parser.error(f"{host!r} is not a registry host[:port]")
    return BytecodePolicy(
        public_keys=tuple(pems),
        require_signatures=args.require_signed_bytecode,
        allowed_registries=args.bytecode_registries,
        cache_dir=args.bytecode_cache_dir,
        insecure_registries=args.bytecode_insecure_registries,
    )
