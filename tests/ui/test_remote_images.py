"""Remote image URLs (`--allow-remote-images`): only public addresses, one deadline, a size cap,
and one text for every failure. Real HTTP servers on loopback count every request that reaches them."""

from __future__ import annotations

import asyncio
import io
import logging
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

import pytest
from PIL import Image

from ui.remote_images import RemoteImageError, address_allowed, failure_message, fetch_remote_image

MAX = 200_000


def _png() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (32, 24), (10, 120, 200)).save(buf, format="PNG")
    return buf.getvalue()


PNG = _png()


class ImageHost:
    """A loopback HTTP server that records every request it gets (path and Host header).

    /img.png: a PNG. /redirect?to=URL: a 302 to URL. /slow: declares 1000 bytes and sends one every
    0.1 s. /big: 50 MB with no Content-Length. /big-declared: Content-Length 1 GB, no body.
    /missing: 404."""

    def __init__(self, host: str = "127.0.0.1"):
        hits: list[tuple[str, str]] = []
        sent = {"big": 0}
        self.hits, self.sent = hits, sent

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep the test output clean
                pass

            def do_GET(self):
                hits.append((self.path, self.headers.get("Host", "")))
                path, query = urlparse(self.path).path, parse_qs(urlparse(self.path).query)
                try:
                    if path == "/img.png":
                        self._answer(200, PNG, "image/png")
                    elif path == "/redirect":
                        self.send_response(302)
                        self.send_header("Location", query["to"][0])
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                    elif path == "/slow":
                        self.send_response(200)
                        self.send_header("Content-Type", "image/png")
                        self.send_header("Content-Length", "1000")
                        self.end_headers()
                        for _ in range(1000):
                            self.wfile.write(b"x")
                            self.wfile.flush()
                            time.sleep(0.1)
                    elif path == "/big":
                        self.send_response(200)
                        self.send_header("Content-Type", "image/png")
                        self.end_headers()
                        chunk = b"\0" * 65536
                        for _ in range(800):  # 50 MB, close-delimited
                            self.wfile.write(chunk)
                            sent["big"] += len(chunk)
                    elif path == "/big-declared":
                        self.send_response(200)
                        self.send_header("Content-Type", "image/png")
                        self.send_header("Content-Length", str(10**9))
                        self.end_headers()
                        time.sleep(2)
                    else:
                        self._answer(404, b"not here", "text/plain")
                except (BrokenPipeError, ConnectionResetError):
                    pass

            def _answer(self, status: int, body: bytes, kind: str):
                self.send_response(status)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.server = ThreadingHTTPServer((host, 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.base = f"http://{host}:{self.port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def host():
    with ImageHost() as server:
        yield server


@pytest.fixture
def other_host():
    """A second server on another loopback address (127.0.0.2), outside 127.0.0.1/32."""
    with ImageHost("127.0.0.2") as server:
        yield server


def fetch(url: str, **kw) -> bytes:
    kw.setdefault("max_bytes", MAX)
    kw.setdefault("deadline_s", 5.0)
    return asyncio.run(fetch_remote_image(url, name="image 2", **kw))


UNIFORM = failure_message("image 2", MAX)


def refused(url: str, caplog=None, **kw) -> str:
    """The user's text of a refused fetch (the server log's reason when `caplog` is given)."""
    if caplog is not None:
        caplog.clear()
    with pytest.raises(RemoteImageError) as err:
        fetch(url, **kw)
    assert str(err.value) == UNIFORM
    if caplog is None:
        return ""
    return " ".join(r.getMessage() for r in caplog.records if r.name == "ui.remote_images")


def test_the_failure_text_says_what_is_fetched_and_nothing_else():
    assert UNIFORM == ("image 2: the remote image could not be fetched (only public http(s) images up to "
                       "0.191 MB are fetched; or send it as a data: URL)")


@pytest.mark.parametrize("form", [
    "127.0.0.1", "localhost", "0.0.0.0", "2130706433", "127.1", "0x7f.1", "0177.0.0.1",
    "[::1]", "[::ffff:127.0.0.1]", "[::ffff:7f00:1]",
])
def test_every_spelling_of_this_machine_is_refused_before_any_request(host, caplog, form):
    caplog.set_level(logging.INFO, logger="ui.remote_images")
    why = refused(f"http://{form}:{host.port}/img.png", caplog)
    # refused for its address (httpx itself rejects the octal form), not because nothing answered
    assert "non-public address" in why or "Invalid IPv4 address" in why
    assert host.hits == []


@pytest.mark.parametrize("url", [
    "http://169.254.169.254/latest/meta-data/", "http://10.0.0.1/x.png", "http://192.168.1.1/x.png",
    "http://172.16.0.1/x.png", "http://100.64.0.1/x.png", "http://224.0.0.1/x.png", "http://[fe80::1]/x.png",
    "http://[fd00::1]/x.png", "http://[2002:7f00:1::]/x.png", "http://[64:ff9b::a9fe:a9fe]/x.png",
    "https://10.0.0.1/x.png",
])
def test_private_link_local_and_hidden_ipv4_addresses_are_refused(caplog, url):
    caplog.set_level(logging.INFO, logger="ui.remote_images")
    started = time.monotonic()
    why = refused(url, caplog)
    assert "non-public address" in why
    assert time.monotonic() - started < 2  # refused, not tried until a timeout


@pytest.mark.parametrize("url", ["ftp://example.com/x.png", "file:///etc/passwd",
                                 "http://user:pw@example.com/x.png", "http:///x.png", "not a url"])
def test_other_schemes_user_info_and_junk_are_refused(caplog, url):
    caplog.set_level(logging.INFO, logger="ui.remote_images")
    why = refused(url, caplog)
    assert why and "pw@" not in why  # the reason is logged, a password in the URL is not


def test_a_name_that_resolves_to_loopback_is_refused(host, caplog, monkeypatch):
    caplog.set_level(logging.INFO, logger="ui.remote_images")
    real = socket.getaddrinfo

    def fake(name, *args, **kw):
        if name == "images.example.test":  # one public address and one loopback address
            return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("93.184.216.34", args[0] if args else 80)),
                    (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.1", args[0] if args else 80))]
        return real(name, *args, **kw)

    monkeypatch.setattr(socket, "getaddrinfo", fake)
    why = refused(f"http://images.example.test:{host.port}/img.png", caplog)
    assert "127.0.0.1" in why and host.hits == []


def test_an_allowed_network_is_fetched(host):
    assert fetch(host.base + "/img.png", allowed_networks=["127.0.0.1/32"]) == PNG
    assert host.hits == [("/img.png", f"127.0.0.1:{host.port}")]


def test_the_checked_address_is_the_one_connected_to(host, monkeypatch):
    """DNS rebinding: the name resolves to 127.0.0.1 (allowed) once, then to 127.0.0.3; the request
    goes to the address that was checked and names the host in its Host header."""
    real, answers = socket.getaddrinfo, iter(["127.0.0.1"] + ["127.0.0.3"] * 10)
    lookups = []

    def fake(name, *args, **kw):
        if name == "rebind.example.test":
            lookups.append(name)
            return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (next(answers), args[0] if args else 80))]
        return real(name, *args, **kw)

    monkeypatch.setattr(socket, "getaddrinfo", fake)
    got = fetch(f"http://rebind.example.test:{host.port}/img.png", allowed_networks=["127.0.0.1/32"])
    assert got == PNG and lookups == ["rebind.example.test"]
    assert host.hits == [("/img.png", f"rebind.example.test:{host.port}")]


def test_a_redirect_to_a_disallowed_address_is_refused(host, other_host, caplog):
    caplog.set_level(logging.INFO, logger="ui.remote_images")
    url = f"{host.base}/redirect?to={other_host.base}/img.png"
    why = refused(url, caplog, allowed_networks=["127.0.0.1/32"])
    assert "127.0.0.2" in why
    assert [p for p, _ in host.hits] == [f"/redirect?to={other_host.base}/img.png"]
    assert other_host.hits == []  # the second hop was checked before it was made


def test_redirects_are_followed_within_the_limit(host):
    one = f"{host.base}/redirect?to=/img.png"
    assert fetch(one, allowed_networks=["127.0.0.1/32"]) == PNG
    host.hits.clear()
    loop = f"{host.base}/redirect?to={host.base}/redirect?to={host.base}/redirect?to=/img.png"
    refused(loop, allowed_networks=["127.0.0.1/32"], max_redirects=2)
    assert len(host.hits) == 3  # three answers, all redirects: the fourth request is never made


def test_a_slow_drip_is_cut_by_the_total_deadline(host):
    started = time.monotonic()
    refused(host.base + "/slow", allowed_networks=["127.0.0.1/32"], deadline_s=1.0)
    # every byte comes within 0.1 s (no read timeout would fire); the whole fetch still ends at 1 s
    assert time.monotonic() - started < 2.5


def test_a_body_over_the_limit_is_cut_while_streaming(host):
    refused(host.base + "/big", allowed_networks=["127.0.0.1/32"])
    time.sleep(0.3)
    assert host.sent["big"] < 20 * 2**20  # the server could not push its 50 MB


def test_a_declared_content_length_over_the_limit_is_refused_at_once(host):
    started = time.monotonic()
    refused(host.base + "/big-declared", allowed_networks=["127.0.0.1/32"])
    assert time.monotonic() - started < 1.5  # not waiting for a body


def test_an_http_error_reads_like_a_refused_address(host):
    refused(host.base + "/missing", allowed_networks=["127.0.0.1/32"])
    assert [p for p, _ in host.hits] == ["/missing"]


def test_the_address_rules():
    import ipaddress

    public = ["8.8.8.8", "93.184.216.34", "2606:4700:4700::1111", "::ffff:8.8.8.8"]
    private = ["127.0.0.1", "10.1.2.3", "172.31.255.255", "192.168.0.1", "169.254.169.254", "100.64.0.1",
               "0.0.0.0", "255.255.255.255", "224.0.0.251", "192.0.2.1", "198.18.0.1", "240.0.0.1",
               "::1", "::", "fe80::1", "fc00::1", "fec0::1", "ff02::1", "::ffff:10.0.0.1", "::ffff:127.0.0.1",
               "2002:a00:1::", "64:ff9b::7f00:1", "2001:db8::1", "2001::1"]
    assert all(address_allowed(ipaddress.ip_address(a)) for a in public)
    assert not any(address_allowed(ipaddress.ip_address(a)) for a in private)
    nets = (ipaddress.ip_network("10.0.0.0/8"),)
    assert address_allowed(ipaddress.ip_address("10.9.9.9"), nets)
    assert not address_allowed(ipaddress.ip_address("127.0.0.1"), nets)
    assert address_allowed(ipaddress.ip_address("::ffff:10.1.1.1"), nets)  # the IPv4 it maps to is allowed


def test_the_http_api_answers_a_loopback_url_with_the_uniform_400(host, tmp_path):
    from fastapi.testclient import TestClient

    from agent import Atelier
    from agent.config import load_profile
    from ui.http_api import ServerOptions, create_app

    atelier = Atelier(profile=load_profile("tiny", {"store": {"root": str(tmp_path)}}))
    client = TestClient(create_app(atelier, ServerOptions(allow_remote_images=True)))
    body = {"model": "atelier-tiny", "messages": [{"role": "user", "content": [
        {"type": "text", "text": "a kite like this"},
        {"type": "image_url", "image_url": {"url": host.base + "/img.png"}}]}]}
    resp = client.post("/v1/chat/completions", json=body)
    assert resp.status_code == 400
    error = resp.json()["error"]
    assert error["message"] == failure_message("image 1", atelier.profile.limits.max_upload_bytes)
    assert error["code"] == "remote_image_unavailable" and error["type"] == "invalid_request_error"
    assert host.hits == []
    atelier.close()
