"""The chat app's server over plain HTTP (no browser): sign-in modes and the file route."""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request

import pytest

pytestmark = pytest.mark.slow


def _get(url: str, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=10) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


def _post(url: str, data: dict[str, str] | None = None) -> tuple[int, dict, str]:
    body = urllib.parse.urlencode(data or {}).encode()
    request = urllib.request.Request(url, data=body, method="POST",
                                     headers={"Content-Type": "application/x-www-form-urlencoded"})
    try:
        with urllib.request.urlopen(request, timeout=10) as resp:
            return resp.status, json.loads(resp.read() or b"{}"), resp.headers.get("set-cookie", "")
    except urllib.error.HTTPError as err:
        return err.code, {}, ""


def test_local_use_signs_in_without_a_password(chat_server):
    status, body = _get(chat_server.url + "/auth/config")
    config = json.loads(body)
    assert status == 200 and config["requireLogin"] is True  # thread history needs a user...
    assert config["headerAuth"] is True and config["passwordAuth"] is False  # ...given without asking
    status, _, cookie = _post(chat_server.url + "/auth/header")
    assert status == 200 and "access_token=" in cookie
    assert _get(chat_server.url + "/atelier/files/nobody/none/x.png")[0] == 404
    assert _get(chat_server.url + "/atelier/files/..%2F..%2Fthreads.sqlite")[0] in (400, 404)


def test_password_login_when_configured(start_chat_server):
    server = start_chat_server({"ATELIER_UI_PASSWORD": "s3cret-pass", "ATELIER_UI_USERNAME": "ana"})
    config = json.loads(_get(server.url + "/auth/config")[1])
    assert config["passwordAuth"] is True and config["headerAuth"] is False
    assert _post(server.url + "/login", {"username": "ana", "password": "wrong"})[0] == 401
    assert _post(server.url + "/login", {"username": "bob", "password": "s3cret-pass"})[0] == 401
    status, body, cookie = _post(server.url + "/login", {"username": "ana", "password": "s3cret-pass"})
    assert status == 200 and "access_token=" in cookie
    assert _post(server.url + "/auth/header")[0] >= 400  # no password-free way in
