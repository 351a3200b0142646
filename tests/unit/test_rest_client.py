"""The thin API client against a local HTTP server: the bearer token is read again when its file
rotates, errors carry the HTTP status and the server's message, every request has a read timeout."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar

import pytest
from urllib3.exceptions import ReadTimeoutError

from bpfleet_api import kubeconfig
from bpfleet_api.errors import ApiError, ConfigError, Expired
from bpfleet_api.kubeconfig import Endpoint
from bpfleet_api.rest import RestClient, object_path


class Recorder(BaseHTTPRequestHandler):
    # method, path, Authorization, Content-Type, body
    seen: ClassVar[list[tuple[str, str, str | None, str | None, bytes]]] = []

    def _answer(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        self.seen.append(
            (
                self.command,
                self.path,
                self.headers.get("Authorization"),
                self.headers.get("Content-Type"),
                body,
            )
        )
        if self.path.startswith("/slow"):
            time.sleep(1.0)
        status = {"/missing": 404, "/gone": 410}.get(self.path.split("?")[0], 200)
        data = json.dumps({"kind": "Status", "message": f"answer {status}", "code": status}).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST = do_PATCH = _answer

    def log_message(self, *args: object) -> None: ...


@pytest.fixture
def server() -> Iterator[str]:
    Recorder.seen = []
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Recorder)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(5)


def test_a_rotated_token_file_is_read_again(server: str, tmp_path: Path):
    token = tmp_path / "token"
    token.write_text("first\n")
    api = RestClient(Endpoint(server, None, token_file=token))
    api.get("/a")
    api.get("/a")
    token.write_text("second-and-longer\n")  # the size changes too, whatever the clock's resolution
    api.get("/a")
    assert [auth for _, _, auth, _, _ in Recorder.seen] == [
        "Bearer first",
        "Bearer first",
        "Bearer second-and-longer",
    ]


def test_errors_carry_the_status_and_the_servers_message(server: str):
    api = RestClient(Endpoint(server, None, token="t"))
    with pytest.raises(ApiError) as missing:
        api.get("/missing")
    assert missing.value.status == 404 and missing.value.reason == "answer 404"
    with pytest.raises(Expired) as gone:
        api.get("/gone")
    assert gone.value.status == 410


def test_a_merge_patch_says_so_and_sends_json(server: str):
    api = RestClient(Endpoint(server, None))
    api.merge_patch("/x", {"status": {"a": 1}})
    [(method, path, auth, content_type, body)] = Recorder.seen
    assert (method, path, auth, content_type) == ("PATCH", "/x", None, "application/merge-patch+json")
    assert json.loads(body) == {"status": {"a": 1}}


def test_every_request_has_a_read_timeout(server: str):
    api = RestClient(Endpoint(server, None), timeout=0.3)
    started = time.monotonic()
    with pytest.raises(ReadTimeoutError):
        api.get("/slow")
    assert time.monotonic() - started < 0.9


def test_object_paths_quote_names():
    assert object_path(None, "v1", "nodes", "n1") == "/api/v1/nodes/n1"
    assert (
        object_path("bpfleet.io", "v1alpha1", "ebpfprogramversions", "a/b", namespace="ns")
        == "/apis/bpfleet.io/v1alpha1/namespaces/ns/ebpfprogramversions/a%2Fb"
    )


def test_not_in_a_pod_without_the_service_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    with pytest.raises(ConfigError):
        kubeconfig.in_cluster(tmp_path)


def test_a_kubeconfig_token_file_is_relative_to_the_kubeconfig(tmp_path: Path):
    config = {
        "current-context": "c",
        "contexts": [{"name": "c", "context": {"cluster": "k", "user": "u"}}],
        "clusters": [{"name": "k", "cluster": {"server": "http://127.0.0.1:1/"}}],
        "users": [{"name": "u", "user": {"tokenFile": "tok"}}],
    }
    (tmp_path / "config").write_text(json.dumps(config))
    endpoint = kubeconfig.from_kubeconfig(tmp_path / "config")
    assert endpoint.server == "http://127.0.0.1:1" and endpoint.token_file == tmp_path / "tok"
    assert endpoint.ssl_context is None
