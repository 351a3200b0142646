"""A real OCI registry on loopback for tests: Debian's docker-registry (the distribution registry)
with its own config, storage in a temporary directory, optionally behind htpasswd basic auth; and a
small pusher of raw blobs and manifests (for images tests build byte by byte, or tamper with)."""

from __future__ import annotations

import base64
import hashlib
import http.client
import json
import shutil
import subprocess
import tempfile
import time
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from e2e.controlplane_setup import free_ports

BINARY = "/usr/bin/docker-registry"
LOOPBACK = "127.0.0.1"


@dataclass(frozen=True)
class User:
    name: str
    password: str

    def basic(self) -> str:
        return "Basic " + base64.b64encode(f"{self.name}:{self.password}".encode()).decode()

    def dockerconfigjson(self, host: str) -> bytes:
        auth = base64.b64encode(f"{self.name}:{self.password}".encode()).decode()
        return json.dumps({"auths": {host: {"auth": auth}}}).encode()


class LocalRegistry:
    """`with LocalRegistry() as reg:` runs a registry at reg.host until the block ends (or fails)."""

    def __init__(self, user: User | None = None) -> None:
        self.user = user
        self.dir = Path(tempfile.mkdtemp(prefix="bpfleet-registry-"))
        self.port = free_ports(1)[0]
        self.host = f"{LOOPBACK}:{self.port}"
        self.process: subprocess.Popen[bytes] | None = None

    def _config(self) -> Path:
        auth = ""
        if self.user is not None:
            htpasswd = subprocess.run(
                ["htpasswd", "-Bbn", self.user.name, self.user.password],
                capture_output=True,
                text=True,
                check=True,
            ).stdout
            (self.dir / "htpasswd").write_text(htpasswd)
            auth = f"auth:\n  htpasswd:\n    realm: bpfleet-test\n    path: {self.dir / 'htpasswd'}\n"
        config = self.dir / "config.yml"
        config.write_text(
            "version: 0.1\n"
            "log:\n  level: error\n  accesslog:\n    disabled: true\n"
            f"storage:\n  filesystem:\n    rootdirectory: {self.dir / 'data'}\n  delete:\n    enabled: true\n"
            f"http:\n  addr: {self.host}\n  secret: bpfleet-test-only\n" + auth
        )
        return config

    def start(self) -> LocalRegistry:
        if not Path(BINARY).exists():
            raise RuntimeError(f"{BINARY} is missing: apt-get install -y docker-registry apache2-utils")
        log = (self.dir / "registry.log").open("wb")
        self.process = subprocess.Popen([BINARY, "serve", str(self._config())], stdout=log, stderr=log)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"docker-registry exited {self.process.returncode}: {self.log_tail()}")
            try:
                status, _, _ = self.request("GET", "/v2/", auth=False)
                if status in (200, 401):
                    return self
            except OSError:
                pass
            time.sleep(0.05)
        raise RuntimeError(f"docker-registry did not answer on {self.host}: {self.log_tail()}")

    def log_tail(self) -> str:
        path = self.dir / "registry.log"
        return path.read_text(errors="replace")[-2000:] if path.exists() else ""

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> LocalRegistry:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *_exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        self.stop()

    # -- a pusher of raw content -------------------------------------------------------------
    def request(
        self,
        method: str,
        path: str,
        body: bytes = b"",
        headers: dict[str, str] | None = None,
        *,
        auth: bool = True,
    ) -> tuple[int, dict[str, str], bytes]:
        send = dict(headers or {})
        if auth and self.user is not None:
            send["Authorization"] = self.user.basic()
        conn = http.client.HTTPConnection(self.host, timeout=30)
        try:
            conn.request(method, path, body=body, headers=send)
            response = conn.getresponse()
            return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
        finally:
            conn.close()

    def push_blob(self, repository: str, data: bytes) -> str:
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        status, headers, _ = self.request("POST", f"/v2/{repository}/blobs/uploads/")
        if status != 202:
            raise RuntimeError(f"blob upload start: HTTP {status}")
        location = urllib.parse.urlsplit(headers["location"])
        query = (location.query + "&" if location.query else "") + urllib.parse.urlencode({"digest": digest})
        status, _, _ = self.request(
            "PUT", f"{location.path}?{query}", data, {"Content-Type": "application/octet-stream"}
        )
        if status != 201:
            raise RuntimeError(f"blob upload of {digest}: HTTP {status}")
        return digest

    def push_manifest(self, repository: str, reference: str, manifest: bytes, media_type: str) -> str:
        status, _, body = self.request(
            "PUT", f"/v2/{repository}/manifests/{reference}", manifest, {"Content-Type": media_type}
        )
        if status != 201:
            raise RuntimeError(f"manifest {reference}: HTTP {status}: {body[:300]!r}")
        return "sha256:" + hashlib.sha256(manifest).hexdigest()

    def get_manifest(self, repository: str, reference: str, media_type: str) -> bytes:
        status, _, body = self.request(
            "GET", f"/v2/{repository}/manifests/{reference}", headers={"Accept": media_type}
        )
        if status != 200:
            raise RuntimeError(f"manifest {reference}: HTTP {status}")
        return body
