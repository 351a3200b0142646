"""The control plane's certificates (a CA, the serving cert, the admin client cert, the service
account keys) and the admin kubeconfig (e2e/controlplane.py)."""

from __future__ import annotations

import base64
import datetime
import ipaddress
from dataclasses import dataclass
from pathlib import Path

import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

CONTEXT_NAME = "bpfleet-local"
ADMIN_USER = "bpfleet-admin"
LOOPBACK = "127.0.0.1"
SERVICE_CIDR = "10.0.0.0/24"
# First address of SERVICE_CIDR: the in-cluster "kubernetes" Service, so it goes in the serving cert.
KUBERNETES_SERVICE_IP = "10.0.0.1"


@dataclass(frozen=True)
class Pki:
    """Paths of the generated credentials inside one directory."""

    dir: Path

    @property
    def ca_crt(self) -> Path:
        return self.dir / "ca.crt"

    @property
    def ca_key(self) -> Path:
        return self.dir / "ca.key"

    @property
    def serving_crt(self) -> Path:
        return self.dir / "serving.crt"

    @property
    def serving_key(self) -> Path:
        return self.dir / "serving.key"

    @property
    def admin_crt(self) -> Path:
        return self.dir / "admin.crt"

    @property
    def admin_key(self) -> Path:
        return self.dir / "admin.key"

    @property
    def sa_key(self) -> Path:
        return self.dir / "sa.key"

    @property
    def sa_pub(self) -> Path:
        return self.dir / "sa.pub"


def _new_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _write_key(path: Path, key: rsa.RSAPrivateKey) -> None:
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        )
    )
    path.chmod(0o600)


def _write_cert(path: Path, cert: x509.Certificate) -> None:
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def _cert_builder(subject: x509.Name, issuer: x509.Name, key: rsa.RSAPrivateKey) -> x509.CertificateBuilder:
    # Backdated an hour so that small clock differences never make a fresh cert "not yet valid".
    now = datetime.datetime.now(datetime.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=365))
    )


def _leaf_cert(
    ca_cert: x509.Certificate,
    ca_key: rsa.RSAPrivateKey,
    key: rsa.RSAPrivateKey,
    subject: x509.Name,
    usage: x509.ObjectIdentifier,
    sans: list[x509.GeneralName] | None = None,
) -> x509.Certificate:
    builder = (
        _cert_builder(subject, ca_cert.subject, key)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_encipherment=True,
                content_commitment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
    )
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    return builder.sign(ca_key, hashes.SHA256())


def _ca_cert(key: rsa.RSAPrivateKey) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "bpfleet-local-ca")])
    return (
        _cert_builder(name, name, key)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_encipherment=False,
                content_commitment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )


def _serving_sans() -> list[x509.GeneralName]:
    dns = [
        "localhost",
        "kubernetes",
        "kubernetes.default",
        "kubernetes.default.svc",
        "kubernetes.default.svc.cluster.local",
    ]
    ips = [LOOPBACK, KUBERNETES_SERVICE_IP]
    return [x509.DNSName(name) for name in dns] + [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ips]


def generate_pki(directory: Path) -> Pki:
    """CA, apiserver serving cert, admin client cert and service-account key pair, all fresh."""
    pki = Pki(directory)
    directory.mkdir(parents=True, exist_ok=True)
    ca_key = _new_key()
    ca = _ca_cert(ca_key)
    _write_key(pki.ca_key, ca_key)
    _write_cert(pki.ca_crt, ca)

    serving_key = _new_key()
    serving_subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "kube-apiserver")])
    serving = _leaf_cert(
        ca, ca_key, serving_key, serving_subject, ExtendedKeyUsageOID.SERVER_AUTH, _serving_sans()
    )
    _write_key(pki.serving_key, serving_key)
    _write_cert(pki.serving_crt, serving)

    # O=system:masters is bound to cluster-admin by the apiserver itself, no RBAC objects needed.
    admin_key = _new_key()
    admin_subject = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "system:masters"),
            x509.NameAttribute(NameOID.COMMON_NAME, ADMIN_USER),
        ]
    )
    admin = _leaf_cert(ca, ca_key, admin_key, admin_subject, ExtendedKeyUsageOID.CLIENT_AUTH)
    _write_key(pki.admin_key, admin_key)
    _write_cert(pki.admin_crt, admin)

    sa_key = _new_key()
    _write_key(pki.sa_key, sa_key)
    pki.sa_pub.write_bytes(
        sa_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return pki


def issue_client_cert(pki: Pki, name: str, common_name: str, organization: str) -> tuple[Path, Path]:
    """A client certificate and key signed by the control plane's CA, as <pki>/<name>.crt/.key: a
    kubelet's is CN=system:node:<node>, O=system:nodes (the Node authorizer's identity)."""
    ca = x509.load_pem_x509_certificate(pki.ca_crt.read_bytes())
    ca_key = serialization.load_pem_private_key(pki.ca_key.read_bytes(), password=None)
    assert isinstance(ca_key, rsa.RSAPrivateKey)
    key = _new_key()
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, organization),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )
    crt_path, key_path = pki.dir / f"{name}.crt", pki.dir / f"{name}.key"
    _write_key(key_path, key)
    _write_cert(crt_path, _leaf_cert(ca, ca_key, key, subject, ExtendedKeyUsageOID.CLIENT_AUTH))
    return crt_path, key_path


def write_kubeconfig(
    path: Path, server: str, pki: Pki, client: tuple[Path, Path] | None = None, user: str = ADMIN_USER
) -> None:
    """Admin kubeconfig (or one of `client`'s certificate and key) with embedded credentials, so it
    can be copied anywhere."""
    client_crt, client_key = client or (pki.admin_crt, pki.admin_key)

    def b64(file: Path) -> str:
        return base64.b64encode(file.read_bytes()).decode()

    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": CONTEXT_NAME,
                "cluster": {"server": server, "certificate-authority-data": b64(pki.ca_crt)},
            }
        ],
        "users": [
            {
                "name": user,
                "user": {
                    "client-certificate-data": b64(client_crt),
                    "client-key-data": b64(client_key),
                },
            }
        ],
        "contexts": [{"name": CONTEXT_NAME, "context": {"cluster": CONTEXT_NAME, "user": user}}],
        "current-context": CONTEXT_NAME,
        "preferences": {},
    }
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    path.chmod(0o600)
