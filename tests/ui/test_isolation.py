"""Every user sees only their own work: two keys, two users, one data root, every surface.

Alice makes and uploads images through the OpenAI-compatible API; Bob, with his own key, tries
to reach them through every way in (files, slash commands, the planner's tool calls, MCP over
HTTP with keys, the Python API, the CLI). Each attempt must be answered exactly like an unknown
ref, so a ref is no existence oracle. The servers are real (uvicorn on loopback), the MCP client
is the SDK's own.
"""

from __future__ import annotations

import base64
import io
import json
import os
import re
import subprocess
import sys
import time

import httpx
import pytest
from PIL import Image

from agent import Atelier
from agent.config import load_profile
from tools.errors import UnknownRefError
from ui.http_api import ServerOptions, create_app, load_api_keys

from test_http_api import LoopbackServer, _free_port

KEY_ALICE = "sk-iso-alice-0123456789"
KEY_BOB = "sk-iso-bob-0123456789"
UNKNOWN = "img_0123456789ab"  # well-formed, made by nobody


def _png(color=(30, 140, 200), size=(64, 48)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format="PNG")
    return buf.getvalue()


def _data_url(data: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(data).decode()


def _links(markdown: str) -> list[str]:
    return re.findall(r"!\[[^\]]*\]\(([^)\s]+)\)", markdown)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("isolation")
    atelier = Atelier(profile=load_profile("tiny", {"store": {"root": str(root)},
                                                    "limits": {"per_user": "1000/minute"}}))
    keys = load_api_keys(spec=f"{KEY_ALICE}=alice,{KEY_BOB}=bob")
    with LoopbackServer(create_app(atelier, ServerOptions(api_keys=keys))) as server:
        server.atelier, server.root, server.keys = atelier, root, keys

        def chat(key, content, thread="t1"):
            resp = httpx.post(f"{server.base}/v1/chat/completions", timeout=300,
                              headers={"Authorization": f"Bearer {key}", "X-Atelier-Thread": thread},
                              json={"model": "atelier-tiny", "messages": [{"role": "user", "content": content}]})
            return resp

        server.chat = chat
        made = chat(KEY_ALICE, "/generate a lighthouse at dusk")
        assert made.status_code == 200, made.text
        server.alice_made = made.json()["atelier"]["images"][0]["ref"]
        server.alice_link = _links(made.json()["choices"][0]["message"]["content"])[0]
        upload = chat(KEY_ALICE, [{"type": "text", "text": "/adjust exposure=+1"},
                                  {"type": "image_url", "image_url": {"url": _data_url(_png())}}])
        assert upload.status_code == 200, upload.text
        server.alice_adjusted = upload.json()["atelier"]["images"][0]["ref"]
        server.alice_upload = atelier.images_for("alice").get(server.alice_adjusted).parent
        assert server.alice_upload
        yield server


def _error_text(resp: httpx.Response) -> str:
    return resp.json()["error"]["message"]


def test_files_only_for_their_owner(world):
    for ref in (world.alice_made, world.alice_upload):
        own = httpx.get(f"{world.base}/v1/files/{ref}", headers={"Authorization": f"Bearer {KEY_ALICE}"})
        assert own.status_code == 200 and own.content[:4] == b"\x89PNG"
        other = httpx.get(f"{world.base}/v1/files/{ref}", headers={"Authorization": f"Bearer {KEY_BOB}"})
        unknown = httpx.get(f"{world.base}/v1/files/{UNKNOWN}", headers={"Authorization": f"Bearer {KEY_BOB}"})
        assert other.status_code == unknown.status_code == 404
        # the same answer as for a ref nobody made: no existence oracle
        assert _error_text(other).replace(ref, "REF") == _error_text(unknown).replace(UNKNOWN, "REF")


def test_signed_links_carry_user_and_expiry(world):
    link = world.alice_link
    assert "sig=" in link and "exp=" in link and "alice" not in link  # the user id stays out of URLs
    assert httpx.get(link).status_code == 200  # a browser shows it without the key
    base, query = link.split("?", 1)
    params = dict(p.split("=", 1) for p in query.split("&"))
    adapter = world.server.config.app.state.adapter
    # Bob's own valid link parameters on Alice's ref: signed for Bob, so not Alice's image
    bob_made = world.chat(KEY_BOB, "/generate a red door").json()["atelier"]["images"][0]
    bob_params = dict(p.split("=", 1) for p in bob_made["url"].split("?", 1)[1].split("&"))
    forged = httpx.get(f"{base}?u={bob_params['u']}&exp={bob_params['exp']}&sig={bob_params['sig']}")
    assert forged.status_code == 403
    # a later expiry, or a tampered signature, does not verify
    later = httpx.get(f"{base}?u={params['u']}&exp={int(params['exp']) + 3600}&sig={params['sig']}")
    assert later.status_code == 403
    assert httpx.get(f"{base}?u={params['u']}&exp={params['exp']}&sig={'0' * 32}").status_code == 403
    assert "expired" in _error_text(later)
    # an expired link (signed correctly, in the past) is refused too
    ref = base.rsplit("/", 1)[1]
    past = int(time.time()) - 5
    expired = f"{base}?u={adapter.user_tag('alice')}&exp={past}&sig={adapter.sign(ref, 'alice', past)}"
    assert httpx.get(expired).status_code == 403


@pytest.mark.parametrize("command", [
    "/relight warm left {ref}",
    "/adjust {ref} exposure=+1",
    "/edit {ref} add a hat",
    "/revert {ref}",
])
def test_slash_commands_on_another_users_ref_are_unknown_refs(world, command):
    for ref in (world.alice_made, world.alice_upload):
        before = {v.ref for v in world.atelier.images_for("bob").all_versions()}
        resp = world.chat(KEY_BOB, command.format(ref=ref), thread="bob-tries")
        unknown = world.chat(KEY_BOB, command.format(ref=UNKNOWN), thread="bob-tries")
        assert resp.status_code == unknown.status_code, (resp.text, unknown.text)
        body = resp.json()
        extra = body.get("atelier") or {}
        assert not extra.get("images"), body
        text = json.dumps(body)
        assert "no image" in text
        assert json.dumps(unknown.json()).count("no image") >= 1
        # nothing of Alice's became Bob's
        after = {v.ref for v in world.atelier.images_for("bob").all_versions()}
        assert after == before


def test_a_users_refs_work_across_their_threads(world):
    resp = world.chat(KEY_ALICE, f"/adjust {world.alice_made} contrast=1.2", thread="another-thread")
    assert resp.status_code == 200, resp.text
    images = resp.json()["atelier"]["images"]
    assert images and images[0]["ref"] != world.alice_made


def test_python_api_resolves_refs_only_for_their_owner(world):
    bob = world.atelier.session("t1", user_id="bob")
    with pytest.raises(UnknownRefError) as other:
        bob.send("/adjust exposure=+1", images=[world.alice_made])
    with pytest.raises(UnknownRefError) as unknown:
        bob.send("/adjust exposure=+1", images=[UNKNOWN])
    assert str(other.value).replace(world.alice_made, "REF") == str(unknown.value).replace(UNKNOWN, "REF")
    with pytest.raises(UnknownRefError):
        bob.version(world.alice_upload)
    # the same thread id is a different conversation per user
    alice = world.atelier.session("t1", user_id="alice")
    assert alice.key != bob.key
    assert {v.owner for v in bob.history()} <= {"bob"}
    assert not {v.ref for v in bob.history()} & {v.ref for v in alice.history()}


def test_same_bytes_from_two_users_are_two_versions(world):
    data = _png((1, 2, 3))
    a = world.atelier.session("dup", user_id="alice").upload(data)
    b = world.atelier.session("dup", user_id="bob").upload(data)
    assert a.ref != b.ref and a.sha256 == b.sha256
    assert a.owner == "alice" and b.owner == "bob"


def _manifest_store(data: bytes) -> dict:
    """Everything a C2PA reader sees in a file: every manifest, ingredients included."""
    import c2pa

    with c2pa.Reader("image/png", io.BytesIO(data)) as reader:
        return json.loads(reader.json())


def test_manifests_name_no_private_refs_or_prompts(world):
    images = world.atelier.images_for("alice")
    adjusted = _manifest_store(images.read_bytes(world.alice_adjusted))
    text = json.dumps(adjusted)
    assert "img_" not in text  # neither the private upload's ref nor any other
    assert "exposure_ev" in text and "adjust_image" in text  # what was done, and how it looks
    assert adjusted["manifests"][adjusted["active_manifest"]]["ingredients"]  # the parent stays, hash-bound
    made = json.dumps(_manifest_store(images.read_bytes(world.alice_made)))
    assert "lighthouse" not in made  # the user's prompt is private by default
    assert "generate_image" in made and "img_" not in made


def test_manifest_includes_the_prompt_when_the_profile_says_so(tmp_path):
    atelier = Atelier(profile=load_profile("tiny", {"store": {"root": str(tmp_path)},
                                                    "provenance": {"include_prompt": True}}))
    result = atelier.session("p").send("/generate a lighthouse at dusk")
    text = json.dumps(_manifest_store(atelier.images_for("local").read_bytes(result.images[0].ref)))
    assert "lighthouse" in text and "img_" not in text


# -- MCP over HTTP with keys, on the same data root -----------------------------------------------


@pytest.fixture(scope="module")
def mcp_url(world):
    from ui.mcp_server import build_server

    port = _free_port()
    server = build_server(world.atelier, api_keys=world.keys, host="127.0.0.1", port=port, log_level="WARNING")
    with LoopbackServer(server.streamable_http_app(), port=port):
        yield f"http://127.0.0.1:{port}/mcp"


async def _mcp_call(url: str, key: str | None, tool: str, args: dict, mode: str = "2026-07-28"):
    import httpx2
    from mcp import Client
    from mcp.client.streamable_http import streamable_http_client

    headers = {"Authorization": f"Bearer {key}"} if key else {}
    async with httpx2.AsyncClient(headers=headers, timeout=300) as http, \
            Client(streamable_http_client(url, http_client=http), mode=mode) as client:
        return await client.call_tool(tool, args)


async def test_mcp_needs_a_key(mcp_url):
    resp = httpx.post(mcp_url, json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"},
                      headers={"Accept": "application/json, text/event-stream"})
    assert resp.status_code == 401
    resp = httpx.post(mcp_url, json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"},
                      headers={"Accept": "application/json, text/event-stream", "Authorization": "Bearer sk-wrong-000000"})
    assert resp.status_code == 401


@pytest.mark.parametrize("tool,args", [
    ("verify", {"image": "{ref}"}),
    ("adjust_image", {"image": "{ref}", "exposure_ev": 1.0}),
    ("revert", {"image": "{ref}"}),
])
@pytest.mark.parametrize("mode", ["2026-07-28", "legacy"])  # legacy: 2025-11-25
async def test_mcp_answers_another_users_ref_like_an_unknown_one(world, mcp_url, tool, args, mode):
    def fill(ref):
        return {k: (v.format(ref=ref) if isinstance(v, str) else v) for k, v in args.items()}

    other = await _mcp_call(mcp_url, KEY_BOB, tool, fill(world.alice_made), mode)
    unknown = await _mcp_call(mcp_url, KEY_BOB, tool, fill(UNKNOWN), mode)
    assert other.is_error and unknown.is_error
    assert other.content[0].text.replace(world.alice_made, "REF") == unknown.content[0].text.replace(UNKNOWN, "REF")
    own = await _mcp_call(mcp_url, KEY_ALICE, "verify", {"image": world.alice_made}, mode)
    assert not own.is_error and json.loads(own.content[0].text)["watermark"]["detected"] is True


async def test_mcp_upload_goes_through_the_session_upload_path(world, mcp_url):
    photo = base64.b64encode(_png((200, 10, 10))).decode()
    made = await _mcp_call(mcp_url, KEY_BOB, "upload_image", {"data": photo, "filename": "mine.png"})
    assert not made.is_error, made.content
    ref = json.loads(made.content[0].text)["image"]
    assert world.atelier.images_for("bob").get(ref).owner == "bob"
    with pytest.raises(UnknownRefError):
        world.atelier.images_for("alice").get(ref)
    screens = world.atelier.services.audit.events(user_id="bob", event="upload_screen")
    assert any((e.get("filename") == "mine.png") for e in screens)


def test_cli_refuses_another_users_ref_in_one_line(world, tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("ATELIER_")}
    env["ATELIER_HOME"] = str(world.root)
    proc = subprocess.run(
        [sys.executable, "-m", "ui.cli", "chat", "--profile", "tiny", "--user", "bob", "--thread", "cli-bob",
         "--image", world.alice_made, "/adjust exposure=+1"],
        env=env, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode != 0
    assert "no image" in proc.stderr and "Traceback" not in proc.stderr


# -- review findings: crafted links, cheap expensive requests, reserved names ----------------------


@pytest.mark.parametrize("query", ["u=%C3%A9&exp=99999999999&sig=00", "u=ab&exp=%C2%B2&sig=00",
                                   "u=ab&exp=" + "9" * 5000 + "&sig=00", "u=ab&exp=&sig=", "sig=%00"])
def test_crafted_link_parameters_are_the_uniform_403(world, query):
    resp = httpx.get(f"{world.base}/v1/files/{world.alice_made}?{query}")
    assert resp.status_code == 403, resp.text


def test_a_keyed_server_refuses_a_keyless_body_before_reading_it(world):
    import socket

    with socket.create_connection(("127.0.0.1", world.port), timeout=10) as sock:
        sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 150000000\r\n\r\n")  # the body never comes: the answer must
        reply = sock.recv(65536).decode(errors="replace")
    assert reply.startswith("HTTP/1.1 401"), reply[:200]


def test_too_many_images_in_one_message_are_refused_before_decoding(world):
    limit = world.atelier.profile.limits.max_images_per_turn
    parts = [{"type": "text", "text": "/adjust exposure=+1"}] + [
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}] * (limit + 1)
    resp = world.chat(KEY_ALICE, parts)
    assert resp.status_code == 400 and resp.json()["error"]["code"] == "too_many_images"


def test_no_api_key_may_act_as_the_local_user():
    from ui.http_api import BadConfigError

    with pytest.raises(BadConfigError, match="reserved"):
        load_api_keys(spec="sk-someone-0123456789=local")
