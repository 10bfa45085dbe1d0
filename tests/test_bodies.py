"""Request bodies without a Content-Length (chunked) over HTTP, through the session's HAProxy and Serve: cut with 413
``too_large`` as soon as they pass ``input.max_bytes`` while being read, never held whole first (serve_app/auth.py,
serve_app/admission.py ``BodyLimit``)."""

from __future__ import annotations

import base64
import json
import socket
from collections.abc import Iterator
from urllib.parse import urlsplit

import httpx
import pytest

from conftest import image_bytes

pytestmark = pytest.mark.serve

MIB = 1024 * 1024
MAX_BYTES = 32 * MIB  # input.max_bytes of serve_config.local.yaml
BOUNDARY = "imgverify-test-boundary"


@pytest.fixture(scope="module")
def client(serve_url):
    with httpx.Client(base_url=serve_url, timeout=120) as http:
        yield http


def multipart(data: bytes) -> tuple[bytes, bytes, str]:
    """The head and tail around a file's bytes in a multipart body with field ``file``, and its content type."""
    head = f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="x.png"\r\n'
    head += "Content-Type: image/png\r\n\r\n"
    return head.encode(), f"\r\n--{BOUNDARY}--\r\n".encode(), f"multipart/form-data; boundary={BOUNDARY}"


def chunks(prefix: bytes, size: int, chunk: int = MIB) -> Iterator[bytes]:
    """``prefix``, then ``size`` bytes of base64-safe filler, ``chunk`` bytes at a time (never all in memory)."""
    if prefix:  # an empty chunk would end a chunked body
        yield prefix
    for start in range(0, size, chunk):
        yield b"A" * min(chunk, size - start)


KINDS = {
    # content type, the bytes before the filler, how far past the limit (of this kind) the filler goes
    "raw": ("image/png", b"", MAX_BYTES + 2 * MIB),
    "multipart": (multipart(b"")[2], multipart(b"")[0], MAX_BYTES + 2 * MIB),
    "json": ("application/json", b'{"image_b64": "', MAX_BYTES * 4 // 3 + 2 * MIB),
}


@pytest.mark.parametrize("kind", list(KINDS))
def test_a_chunked_body_over_the_limit_is_answered_before_its_end_is_sent(serve_url, kind):
    """A raw HTTP/1.1 client sends the headers and 2 MiB more than the limit in chunks, but never the last chunk:
    the 413 can only come back if the service cut the body while reading it (reading it whole would wait for
    the end forever)."""
    content_type, prefix, size = KINDS[kind]
    url = urlsplit(serve_url)
    with socket.create_connection((url.hostname, url.port), timeout=120) as sock:
        sock.sendall(
            f"POST /v1/detect HTTP/1.1\r\nHost: {url.netloc}\r\nContent-Type: {content_type}\r\n"
            "Transfer-Encoding: chunked\r\nX-Request-Id: chunked-over\r\n\r\n".encode()
        )
        for piece in chunks(prefix, size):
            sock.sendall(b"%x\r\n%s\r\n" % (len(piece), piece))
        status, headers, body = read_response(sock)  # the terminating 0-length chunk was never sent
    assert status == 413 and headers["content-type"] == "application/json"
    assert body["error"] == "too_large" and body["request_id"] == "chunked-over" and "limit" in body["detail"]


def read_response(sock: socket.socket) -> tuple[int, dict[str, str], dict]:
    """Status, headers and JSON body of one HTTP/1.1 response with a Content-Length."""
    data = b""
    while b"\r\n\r\n" not in data:
        data += recv(sock)
    head, body = data.split(b"\r\n\r\n", 1)
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, v in (line.split(":", 1) for line in lines[1:])}
    while len(body) < int(headers["content-length"]):
        body += recv(sock)
    return int(lines[0].split()[1]), headers, json.loads(body)


def recv(sock: socket.socket) -> bytes:
    data = sock.recv(65536)
    assert data, "the connection closed without an answer"
    return data


def test_a_client_that_sends_a_whole_chunked_body_gets_the_json_413(client):
    # What requests / httpx do with a generator body: Transfer-Encoding: chunked, everything sent, then read.
    filler = chunks(b"", MAX_BYTES + 2 * MIB)
    response = client.post("/v1/detect", content=filler, headers={"content-type": "image/png"})
    assert response.request.headers["transfer-encoding"] == "chunked"
    assert response.status_code == 413 and response.json()["error"] == "too_large"


def test_chunked_bodies_under_the_limit_are_scored(client):
    image = image_bytes("PNG", size=(96, 96))
    head, tail, content_type = multipart(image)
    bodies = {
        "raw": ("image/png", [image[:100], image[100:]]),
        "multipart": (content_type, [head, image, tail]),
        "json": ("application/json", [b'{"image_b64": "', base64.b64encode(image), b'"}']),
    }
    for kind, (content_type, pieces) in bodies.items():
        headers = {"content-type": content_type}
        request = client.build_request("POST", "/v1/detect", content=iter(pieces), headers=headers)
        assert request.headers.get("transfer-encoding") == "chunked" and "content-length" not in request.headers
        response = client.send(request)
        assert response.status_code == 200, (kind, response.text)
        assert response.json()["image"]["bytes"] == len(image)
    assert client.get("/healthz").status_code == 200  # the service is up after the bodies it cut
