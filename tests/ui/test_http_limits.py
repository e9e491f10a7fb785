"""Issue 12 on the HTTP API: request bodies over `limits.max_request_bytes` are cut before they are
parsed (declared or chunked), bodies with NaN / Infinity are a 400, a 10 MB prompt is refused at
once. A real uvicorn server on loopback, raw sockets where a client library would hide the wire."""

from __future__ import annotations

import json
import socket
import threading
import time

import httpx
import pytest
import uvicorn

from agent import Atelier
from agent.config import load_profile
from ui.http_api import ServerOptions, create_app

LIMIT = 12 * 2**20  # room for the 10 MB prompt below, small enough to overflow quickly


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("http-limits")
    atelier = Atelier(profile=load_profile("tiny", {"store": {"root": str(root)},
                                                    "limits": {"per_user": "1000/minute", "max_request_bytes": LIMIT}}))
    port = _free_port()
    uv = uvicorn.Server(uvicorn.Config(create_app(atelier, ServerOptions()), host="127.0.0.1", port=port,
                                       log_level="warning"))
    thread = threading.Thread(target=uv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not uv.started:
        assert time.monotonic() < deadline and thread.is_alive(), "uvicorn did not start"
        time.sleep(0.05)
    uv.base, uv.port = f"http://127.0.0.1:{port}", port
    yield uv
    uv.should_exit = True
    thread.join(timeout=30)
    atelier.close()


def _alive(server) -> None:
    assert httpx.get(server.base + "/v1/models", timeout=10).status_code == 200


def _head(server, extra: str) -> bytes:
    return (f"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\n"
            f"Content-Type: application/json\r\n{extra}\r\n").encode()


def _status_and_json(raw: bytes) -> tuple[int, dict]:
    head, _, body = raw.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    if b"transfer-encoding: chunked" in head.lower():
        size, _, rest = body.partition(b"\r\n")
        body = rest[: int(size, 16)]
    return status, json.loads(body)


def test_a_declared_body_over_the_limit_is_refused_before_it_is_sent(server):
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(_head(server, f"Content-Length: {100 * 2**30}\r\n"))  # 100 GB announced, none sent
        raw = b""
        while b"}}" not in raw:
            chunk = sock.recv(65536)
            if not chunk:
                break
            raw += chunk
    status, body = _status_and_json(raw)
    assert status == 413 and time.monotonic() - started < 2
    assert body == {"error": {"message": "request body over this server's 12 MB limit", "type": "invalid_request_error",
                              "param": None, "code": "request_too_large"}}
    _alive(server)


def test_a_chunked_body_is_cut_at_the_limit_and_the_server_stays_up(server):
    """The client would send 512 MB; the server answers 413 after about 12 MB and stops reading."""
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    answer = bytearray()

    def read():
        try:
            while chunk := sock.recv(65536):
                answer.extend(chunk)
        except OSError:
            pass

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    sock.sendall(_head(server, "Transfer-Encoding: chunked\r\n"))
    piece = b"[" + b"1," * 32767 + b"1"  # 64 KiB of a JSON array that never closes
    frame = f"{len(piece):x}\r\n".encode() + piece + b"\r\n"
    sent = 0
    try:
        while sent < 512 * 2**20 and not answer:
            sock.sendall(frame)
            sent += len(piece)
    except OSError:  # the server closed the connection after its answer
        pass
    reader.join(timeout=10)
    sock.close()
    status, body = _status_and_json(bytes(answer))
    assert status == 413 and body["error"]["code"] == "request_too_large"
    assert sent < 4 * LIMIT  # cut near the limit (plus socket buffers), not after everything
    _alive(server)


def test_a_body_within_the_limit_is_served(server):
    resp = httpx.post(server.base + "/v1/chat/completions", timeout=60, content=json.dumps(
        {"model": "atelier-tiny", "messages": [{"role": "user", "content": "hi"}], "pad": "x" * (LIMIT // 2)}),
        headers={"Content-Type": "application/json"})
    assert resp.status_code == 200, resp.text


@pytest.mark.parametrize("raw", [
    '{"model": "atelier-tiny", "metadata": {"thread_id": "t-nan", "score": NaN}, '
    '"messages": [{"role": "user", "content": "hi"}]}',
    '{"model": "atelier-tiny", "messages": [{"role": "assistant", "content": "", "tool_calls": [{"id": "c1", '
    '"type": "function", "function": {"name": "generate_image", "arguments": {"prompt": "x", "seed": Infinity}}}]}, '
    '{"role": "user", "content": "again"}]}',
    '{"model": "atelier-tiny", "temperature": -Infinity, "messages": [{"role": "user", "content": "hi"}]}',
    '{"model": "atelier-tiny", "messages": [{"role": "user", "content": "hi", "metadata": {"w": 1e400}}]}',
])
def test_nan_and_infinity_anywhere_in_a_body_are_a_400(server, raw):
    resp = httpx.post(server.base + "/v1/chat/completions", content=raw, timeout=30,
                      headers={"Content-Type": "application/json"})
    assert resp.status_code == 400
    error = resp.json()["error"]
    assert error["type"] == "invalid_request_error" and "\n" not in error["message"]
    assert "is not a JSON number (NaN, Infinity and out-of-range numbers are not allowed)" in error["message"]
    _alive(server)


def test_malformed_json_is_still_a_400_in_openai_shape(server):
    resp = httpx.post(server.base + "/v1/chat/completions", content=b'{"model": ', timeout=30,
                      headers={"Content-Type": "application/json"})
    assert resp.status_code == 400 and resp.json()["error"]["type"] == "invalid_request_error"


@pytest.mark.parametrize("stream", [False, True])
def test_a_ten_megabyte_prompt_is_refused_before_any_work(server, stream):
    body = json.dumps({"model": "atelier-tiny", "stream": stream,
                       "messages": [{"role": "user", "content": "a fox " * 1_750_000}]})
    assert len(body) > 10_000_000
    resp = httpx.post(server.base + "/v1/chat/completions", content=body, timeout=30,
                      headers={"Content-Type": "application/json"})
    assert resp.status_code == 400
    error = resp.json()["error"]
    assert error["code"] == "prompt_too_long"
    assert error["message"] == ("the message is 10,499,999 characters long; the limit is 4,000: "
                                "shorten it and send it again")
    # how fast: bench/api_overhead.py (a timed assertion fails on a loaded machine)
