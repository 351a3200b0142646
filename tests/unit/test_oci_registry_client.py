"""The registry client against a scripted hostile server on loopback: auth challenges, caps read
as a stream, bodies kept out of errors, digests, redirects and the deadline."""

from __future__ import annotations

import hashlib
import json
import time
from http.server import BaseHTTPRequestHandler

import pytest

from node_agent.errors import ImagePullFailed
from node_agent.oci.auth import Credentials, from_dockerconfigjson, parse_challenge
from node_agent.oci.registry import OCI_MANIFEST, Descriptor, Limits, Registry
from tests.unit.oci_stub import reply, stub_server

MANIFEST = json.dumps({"schemaVersion": 2, "mediaType": OCI_MANIFEST, "layers": []}).encode()
SECRET = b"SECRET-BODY-a1b2c3"


def descriptor(data: bytes) -> Descriptor:
    return Descriptor("application/octet-stream", "sha256:" + hashlib.sha256(data).hexdigest(), len(data))


def test_a_bearer_challenge_is_answered_with_a_token_fetched_with_basic_credentials():
    with stub_server() as stub:
        challenge = f'Bearer realm="http://{stub.host}/token",service="reg",scope="repository:r:pull"'

        def manifest(handler: BaseHTTPRequestHandler) -> None:
            if handler.headers.get("Authorization") == "Bearer tok-123":
                reply(200, MANIFEST, {"Content-Type": OCI_MANIFEST})(handler)
            else:
                reply(401, SECRET, {"WWW-Authenticate": challenge})(handler)

        def token(handler: BaseHTTPRequestHandler) -> None:
            ok = handler.headers.get("Authorization") == Credentials("u", "p").basic()
            reply(200 if ok else 401, json.dumps({"token": "tok-123"}).encode())(handler)

        stub.routes = {"/v2/r/manifests/v1": manifest, "/token": token}
        got = Registry(stub.host, credentials=Credentials("u", "p")).manifest("r", "v1")
        assert got.data == MANIFEST and got.digest == "sha256:" + hashlib.sha256(MANIFEST).hexdigest()
        token_path = next(path for path, _ in stub.requests if path.startswith("/token"))
        assert "service=reg" in token_path and "scope=repository%3Ar%3Apull" in token_path

        with pytest.raises(ImagePullFailed, match="token service refused the credentials") as info:
            Registry(stub.host, credentials=Credentials("u", "wrong")).manifest("r", "v1")
        assert SECRET.decode() not in str(info.value)


def test_basic_auth_without_credentials_asks_for_a_pull_secret():
    with stub_server() as stub:
        stub.routes = {"/v2/r/manifests/v1": reply(401, SECRET, {"WWW-Authenticate": 'Basic realm="x"'})}
        with pytest.raises(ImagePullFailed, match="requires credentials"):
            Registry(stub.host).manifest("r", "v1")
        with pytest.raises(ImagePullFailed, match="refused the credentials"):
            Registry(stub.host, credentials=Credentials("u", "p")).manifest("r", "v1")


def test_an_endless_body_is_cut_at_the_cap_without_reading_it_all():
    with stub_server() as stub:

        def endless(handler: BaseHTTPRequestHandler) -> None:
            handler.send_response(200)
            handler.send_header("Transfer-Encoding", "chunked")
            handler.end_headers()
            chunk = b"\0" * 65536
            try:
                while stub.sent < 1 << 30:
                    handler.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                    stub.sent += len(chunk)
            except OSError:
                pass

        stub.routes = {"/v2/r/blobs/" + descriptor(b"x").digest: endless}
        start = time.monotonic()
        with pytest.raises(ImagePullFailed, match="over the 1048576-byte limit"):
            Registry(stub.host).blob("r", descriptor(b"x"), cap=1 << 20)
        assert time.monotonic() - start < 10
        time.sleep(0.2)
        assert stub.sent < 32 << 20, "the client kept reading past its cap"


def test_sizes_over_the_cap_are_refused_before_the_body():
    with stub_server() as stub:
        big = Descriptor("x", "sha256:" + "0" * 64, 65 << 20)
        with pytest.raises(ImagePullFailed, match="over the 67108864-byte limit"):
            Registry(stub.host).blob("r", big)
        assert stub.requests == []  # the descriptor alone said too much
        small = descriptor(b"x")
        stub.routes = {f"/v2/r/blobs/{small.digest}": reply(200, b"x", {"Content-Length": str(10 << 30)})}
        with pytest.raises(ImagePullFailed, match="is 10737418240 bytes, over"):
            Registry(stub.host).blob("r", small)


def test_bodies_never_reach_the_error_message():
    with stub_server() as stub:
        stub.routes = {
            "/v2/r/manifests/a": reply(500, SECRET),
            "/v2/r/manifests/b": reply(200, b"{" + SECRET),
            "/v2/r/manifests/c": reply(200, b'["' + SECRET + b'"]'),
        }
        for tag, words in (("a", "HTTP 500"), ("b", "not JSON"), ("c", "not a JSON object")):
            with pytest.raises(ImagePullFailed, match=words) as info:
                Registry(stub.host).manifest("r", tag)
            assert SECRET.decode() not in str(info.value) and SECRET.decode() not in repr(
                info.value.__cause__
            )


def test_contents_must_match_their_digests():
    with stub_server() as stub:
        wanted = descriptor(b"the real layer")
        pinned = "sha256:" + hashlib.sha256(b"other").hexdigest()
        stub.routes = {
            f"/v2/r/blobs/{wanted.digest}": reply(200, b"a fake layer!!"),
            f"/v2/r/manifests/{pinned}": reply(200, MANIFEST),
            "/v2/r/manifests/lying": reply(200, MANIFEST, {"Docker-Content-Digest": pinned}),
        }
        with pytest.raises(ImagePullFailed, match="does not match its descriptor"):
            Registry(stub.host).blob("r", wanted)
        with pytest.raises(ImagePullFailed, match="does not match its digest"):
            Registry(stub.host).manifest("r", pinned)
        with pytest.raises(ImagePullFailed, match="digest header does not match"):
            Registry(stub.host).manifest("r", "lying")


def test_redirects_are_bounded_and_never_downgrade_to_another_http_host():
    with stub_server() as stub:
        stub.routes = {
            "/v2/r/manifests/loop": reply(307, headers={"Location": "/v2/r/manifests/loop"}),
            "/v2/r/manifests/away": reply(302, headers={"Location": "http://198.51.100.7/steal"}),
            "/v2/r/manifests/ok": reply(307, headers={"Location": "/final"}),
            "/final": reply(200, MANIFEST),
        }
        with pytest.raises(ImagePullFailed, match="more than 3 redirects"):
            Registry(stub.host).manifest("r", "loop")
        with pytest.raises(ImagePullFailed, match="non-https"):
            Registry(stub.host).manifest("r", "away")
        assert Registry(stub.host).manifest("r", "ok").data == MANIFEST


def test_the_whole_pull_has_a_deadline():
    with stub_server() as stub:

        def slow(handler: BaseHTTPRequestHandler) -> None:
            time.sleep(3)
            reply(200, MANIFEST)(handler)

        stub.routes = {"/v2/r/manifests/slow": slow}
        start = time.monotonic()
        with pytest.raises(ImagePullFailed):
            Registry(stub.host, limits=Limits(total_seconds=0.5)).manifest("r", "slow")
        assert time.monotonic() - start < 2.5


def test_only_loopback_and_configured_hosts_are_plain_http():
    assert Registry("127.0.0.1:5000").scheme == "http" and Registry("localhost:5000").scheme == "http"
    assert (
        Registry("quay.io").scheme == "https"
        and Registry("registry.lan:5000", insecure=True).scheme == "http"
    )


def test_dockerconfigjson_entries_are_matched_by_host():
    auth = {
        "auths": {
            "https://index.docker.io/v1/": {"auth": "aHViOnB3"},
            "reg:5000": {"username": "a", "password": "b"},
        }
    }
    data = {".dockerconfigjson": json.dumps(auth).encode()}
    assert from_dockerconfigjson(data, "docker.io") == Credentials("hub", "pw")
    assert from_dockerconfigjson(data, "reg:5000") == Credentials("a", "b")
    assert from_dockerconfigjson(data, "quay.io") is None
    assert "pw" not in repr(Credentials("hub", "pw"))
    for bad in ({}, {".dockerconfigjson": b"{x"}, {".dockerconfigjson": b'{"auths": {"q": {"auth": "!!"}}}'}):
        with pytest.raises(ImagePullFailed):
            from_dockerconfigjson(bad, "q")


def test_challenges_parse_quoted_and_bare_parameters():
    got = parse_challenge('Bearer realm="https://a/t",service=reg,scope="repository:x:pull,push"')
    assert got is not None and got.scheme == "bearer"
    assert got.params == {"realm": "https://a/t", "service": "reg", "scope": "repository:x:pull,push"}
    assert parse_challenge(None) is None and parse_challenge("x" * 5000) is None
