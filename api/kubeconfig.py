"""Where the API server is and how to prove who we are: in a pod, the ServiceAccount; otherwise a
kubeconfig's current context (a bearer token, a token file, or a client certificate)."""

from __future__ import annotations

import base64
import os
import ssl
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from bpfleet_api.errors import ConfigError

SERVICE_ACCOUNT = Path("/var/run/secrets/kubernetes.io/serviceaccount")


@dataclass(frozen=True)
class Endpoint:
    server: str  # https://host:port, no trailing slash
    ssl_context: ssl.SSLContext | None  # None for plain http
    token: str | None = None
    token_file: Path | None = None  # read again whenever it changes: projected tokens rotate


def in_cluster(root: Path = SERVICE_ACCOUNT) -> Endpoint:
    host, port = os.environ.get("KUBERNETES_SERVICE_HOST"), os.environ.get("KUBERNETES_SERVICE_PORT")
    token = root / "token"
    if not host or not port or not token.exists():
        raise ConfigError("not in a pod: no KUBERNETES_SERVICE_HOST/PORT or no ServiceAccount token")
    if ":" in host:  # an IPv6 address
        host = f"[{host}]"
    context = ssl.create_default_context(cafile=str(root / "ca.crt"))
    return Endpoint(f"https://{host}:{port}", context, token_file=token)


def from_kubeconfig(path: str | os.PathLike[str]) -> Endpoint:
    file = Path(path).expanduser()
    try:
        config = yaml.safe_load(file.read_text()) or {}
    except (OSError, yaml.YAMLError) as e:
        raise ConfigError(f"cannot read kubeconfig {file}: {e}") from e
    base = file.parent
    context = _named(config, "contexts", config.get("current-context"), "context")
    cluster = _named(config, "clusters", context.get("cluster"), "cluster")
    user = _named(config, "users", context.get("user"), "user") if context.get("user") else {}
    server = str(cluster.get("server") or "").rstrip("/")
    if not server:
        raise ConfigError(f"kubeconfig {file}: the cluster has no server")
    token_file = Path(base, user["tokenFile"]) if user.get("tokenFile") else None
    tls = _tls(cluster, user, base) if server.startswith("https://") else None
    return Endpoint(server, tls, token=user.get("token"), token_file=token_file)


def load(kubeconfig: str | None = None) -> Endpoint:
    """An explicit kubeconfig wins; in a pod, the ServiceAccount; otherwise $KUBECONFIG or
    ~/.kube/config."""
    if kubeconfig:
        return from_kubeconfig(kubeconfig)
    try:
        return in_cluster()
    except ConfigError:
        return from_kubeconfig(os.environ.get("KUBECONFIG") or "~/.kube/config")


def _named(config: dict[str, Any], section: str, name: Any, field: str) -> dict[str, Any]:
    for item in config.get(section) or []:
        if item.get("name") == name:
            return dict(item.get(field) or {})
    raise ConfigError(f"kubeconfig: no {section[:-1]} named {name!r}")


def _tls(cluster: dict[str, Any], user: dict[str, Any], base: Path) -> ssl.SSLContext:
    context = ssl.create_default_context()
    if cluster.get("insecure-skip-tls-verify"):
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    elif cluster.get("certificate-authority-data"):
        context.load_verify_locations(cadata=base64.b64decode(cluster["certificate-authority-data"]).decode())
    elif cluster.get("certificate-authority"):
        context.load_verify_locations(cafile=str(base / cluster["certificate-authority"]))
    cert = _pem(user, "client-certificate", base)
    key = _pem(user, "client-key", base)
    if cert and key:
        _load_chain(context, cert, key)
    return context


def _pem(user: dict[str, Any], field: str, base: Path) -> bytes | None:
    if user.get(f"{field}-data"):
        return base64.b64decode(user[f"{field}-data"])
    if user.get(field):
        return (base / user[field]).read_bytes()
    return None


def _load_chain(context: ssl.SSLContext, cert: bytes, key: bytes) -> None:
    # ssl reads a chain from files only: a private directory that lives only while it is read.
    with tempfile.TemporaryDirectory(prefix="bpfleet-tls-") as directory:
        cert_path, key_path = Path(directory, "cert.pem"), Path(directory, "key.pem")
        for path, data in ((cert_path, cert), (key_path, key)):
            path.touch(mode=0o600)
            path.write_bytes(data)
        context.load_cert_chain(str(cert_path), str(key_path))
