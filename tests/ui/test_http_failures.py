"""The HTTP API on failures of the sessions database and on shared quotas: a failed checkpoint
write is a 5xx (never a 200 with the previous answer), a corrupt sessions file a 503 naming it, a
busy thread a 409, and clients without keys have a quota per address."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import sqlite3

import httpx
from langgraph.checkpoint.sqlite import SqliteSaver
from PIL import Image

from agent import Atelier
from agent.config import load_profile
from agent.leases import ThreadLeases
from agent.session import thread_key
from tools.store import LOCAL_USER
from ui.http_api import ServerOptions, create_app

MODEL = "atelier-tiny"


def _atelier(root, **limits) -> Atelier:
    return Atelier(profile=load_profile("tiny", {"store": {"root": str(root)},
                                                 "limits": {"per_user": "1000/minute", **limits}}))


def _client(app, host: str = "127.0.0.1") -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app, client=(host, 40000)),
                             base_url="http://atelier.test", timeout=120)


def _data_url(seed: int = 1) -> str:
    buf = io.BytesIO()
    Image.effect_noise((64, 64), 30 + seed).convert("RGB").save(buf, "PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _body(text: str, thread: str, *, image: str | None = None, stream: bool = False) -> dict:
    content = [{"type": "text", "text": text}] + ([{"type": "image_url", "image_url": {"url": image}}] if image else [])
    return {"model": MODEL, "messages": [{"role": "user", "content": content}], "stream": stream,
            "metadata": {"thread_id": thread}}


async def test_a_failed_checkpoint_write_is_a_5xx_not_the_previous_answer(tmp_path, monkeypatch):
    atelier = _atelier(tmp_path)
    async with _client(create_app(atelier, ServerOptions())) as client:
        first = await client.post("/v1/chat/completions", json=_body("/adjust exposure=+1", "t-save", image=_data_url()))
        assert first.status_code == 200, first.text
        previous = first.json()["choices"][0]["message"]["content"]

        def put(self, *args, **kwargs):
            raise sqlite3.OperationalError("attempt to write a readonly database")

        monkeypatch.setattr(SqliteSaver, "put", put)
        failed = await client.post("/v1/chat/completions", json=_body("/adjust exposure=-0.5", "t-save"))
        assert failed.status_code == 503, failed.text
        error = failed.json()["error"]
        assert error["code"] == "checkpoint_failed" and "could not be saved" in error["message"]
        assert "\n" not in error["message"] and previous not in failed.text

        streamed = await client.post("/v1/chat/completions", json=_body("/adjust exposure=-0.3", "t-save", stream=True))
        chunks = [json.loads(line[6:]) for line in streamed.text.splitlines()
                  if line.startswith("data: {")]
        assert chunks[-1]["error"]["code"] == "checkpoint_failed"
        assert not any("img_" in json.dumps(c) for c in chunks)  # no image of an earlier turn
        monkeypatch.undo()
        again = await client.post("/v1/chat/completions", json=_body("/adjust exposure=-0.5", "t-save"))
        assert again.status_code == 200
    atelier.close()


async def test_a_corrupt_sessions_database_is_a_503_naming_the_file(tmp_path):
    db = tmp_path / "sessions.sqlite"
    db.write_bytes(os.urandom(8192))
    before = hashlib.sha256(db.read_bytes()).hexdigest()
    atelier = _atelier(tmp_path)
    async with _client(create_app(atelier, ServerOptions())) as client:
        for stream in (False, True):
            resp = await client.post("/v1/chat/completions", json=_body("/generate a fox", "t-bad", stream=stream))
            assert resp.status_code == 503, resp.text
            error = resp.json()["error"]
            assert error["code"] == "bad_database" and str(db) in error["message"]
            assert "move it aside or restore a backup" in error["message"] and "\n" not in error["message"]
    atelier.close()
    assert hashlib.sha256(db.read_bytes()).hexdigest() == before


async def test_a_busy_thread_is_a_409(tmp_path):
    atelier = _atelier(tmp_path, thread_busy_wait_s=0.3)
    other = ThreadLeases(atelier.profile.store.sessions_url(), wait_s=0)  # "another process"
    holder = other.acquire(thread_key(LOCAL_USER, "t-busy"))
    try:
        async with _client(create_app(atelier, ServerOptions())) as client:
            for stream in (False, True):
                resp = await client.post("/v1/chat/completions",
                                         json=_body("/adjust exposure=+1", "t-busy", image=_data_url(2), stream=stream))
                assert resp.status_code == 409, resp.text
                assert resp.json()["error"] == {
                    "message": "this chat is busy with another request; try again when it finishes",
                    "type": "invalid_request_error", "param": None, "code": "thread_busy"}
    finally:
        other.release(thread_key(LOCAL_USER, "t-busy"), holder)
        other.close()
        atelier.close()


async def test_clients_without_keys_have_a_quota_per_address(tmp_path):
    atelier = _atelier(tmp_path, per_user="2/minute")
    app = create_app(atelier, ServerOptions())
    async with _client(app, "127.0.0.2") as first, _client(app, "127.0.0.3") as second:
        # `/undo` on an empty thread fails fast (400) after the request is counted
        for i in range(2):
            resp = await first.post("/v1/chat/completions", json=_body("/undo", f"q-a-{i}"))
            assert resp.status_code == 400, resp.text
        limited = await first.post("/v1/chat/completions", json=_body("/undo", "q-a-2"))
        assert limited.status_code == 429 and limited.headers["Retry-After"]
        # another address: its own quota, although both are user `local`
        resp = await second.post("/v1/chat/completions", json=_body("/undo", "q-b-0"))
        assert resp.status_code == 400, resp.text
    # a second server process on the same data root shares the first address's quota
    again = _atelier(tmp_path, per_user="2/minute")
    async with _client(create_app(again, ServerOptions()), "127.0.0.2") as first:
        resp = await first.post("/v1/chat/completions", json=_body("/undo", "q-a-3"))
        assert resp.status_code == 429
    again.close()
    atelier.close()


async def test_mcp_shows_a_busy_thread_in_one_line(tmp_path):
    from ui.mcp_server import AtelierMCP

    atelier = _atelier(tmp_path, thread_busy_wait_s=0.2)
    mcp = AtelierMCP(atelier, thread_id="mcp-busy")
    session = mcp.session_for(None)
    other = ThreadLeases(atelier.profile.store.sessions_url(), wait_s=0)
    holder = other.acquire(session.key)
    try:
        result = await mcp._runner("generate_image")(None, prompt="a fox")
        assert result.is_error and len(result.content) == 1
        assert result.content[0].text == "this chat is busy with another request; try again when it finishes"
    finally:
        other.release(session.key, holder)
        other.close()
        atelier.close()
