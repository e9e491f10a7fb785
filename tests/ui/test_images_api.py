"""OpenAI's Images API served by Atelier (`ui/images_api.py`), driven by the official `openai`
client against a real uvicorn server on loopback (tiny profile), and the remote image engine
(`engine.kind: openai-images`) against a second Atelier server."""

from __future__ import annotations

import base64
import io

import httpx
import openai
import pytest
from PIL import Image
from test_http_api import LoopbackServer, _free_port

from agent import Atelier
from agent.config import load_profile
from tools.errors import EngineError
from tools.provenance import verify_bytes
from ui.http_api import ServerOptions, create_app, load_api_keys

KEY = "sk-images-alice-0123456789"


def _atelier(root, **overrides) -> Atelier:
    return Atelier(profile=load_profile("tiny", {"store": {"root": str(root)}, **overrides}))


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    atelier = _atelier(tmp_path_factory.mktemp("images-api"), limits={"per_user": "1000/minute"})
    with LoopbackServer(create_app(atelier, ServerOptions())) as srv:
        srv.atelier = atelier
        srv.client = openai.OpenAI(base_url=srv.base + "/v1", api_key="unused", max_retries=0, timeout=300)
        yield srv


def _png(color=(30, 120, 200), size=(96, 64)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format="PNG")
    return buf.getvalue()


def _decoded(item) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(item.b64_json)))


def test_generate_answers_sealed_pngs_at_the_nearest_aspect_ratio(server):
    resp = server.client.images.generate(model="atelier-tiny", prompt="a lighthouse at dusk", n=2, size="1536x1024")
    assert len(resp.data) == 2
    images = [_decoded(d) for d in resp.data]
    assert all(im.format == "PNG" for im in images)
    assert all(abs(im.width / im.height - 1.5) < 0.1 for im in images)  # 1536x1024 -> 3:2
    made = resp.model_extra["atelier"]["images"]
    assert len(made) == 2 and made[0]["ref"] != made[1]["ref"]
    # each one carries the watermark and credentials a chat turn's image carries
    sealer = server.atelier.services.sealer
    report = verify_bytes(base64.b64decode(resp.data[0].b64_json), key_dir=sealer.key_dir, registry=sealer.registry)
    assert report["watermark"]["detected"]
    assert report["watermark"]["id"] == server.atelier.store.get(made[0]["ref"]).metadata["watermark_id"]
    logged = [e.get("ref") for e in server.atelier.services.audit.events(event="image")]
    assert made[0]["ref"] in logged and made[1]["ref"] in logged  # the audit log has what the API made


def test_url_format_links_to_the_served_file(server):
    resp = server.client.images.generate(model="atelier-tiny", prompt="a paper boat", response_format="url")
    got = httpx.get(resp.data[0].url)
    assert got.status_code == 200 and got.headers["content-type"] == "image/png"


def test_edit_multipart_with_a_reference_and_json_with_a_data_url(server):
    scene, person = _png((30, 120, 200)), _png((200, 160, 120), (64, 64))
    resp = server.client.images.edit(model="atelier-tiny", prompt="add a red kite in the sky",
                                     image=[("sky.png", scene, "image/png"), ("kite.png", person, "image/png")])
    assert len(resp.data) == 1 and _decoded(resp.data[0]).format == "PNG"
    result = resp.model_extra["atelier"]["results"][0]
    assert result["tool"] == "edit_image"
    ref = resp.model_extra["atelier"]["images"][0]["ref"]
    edited = server.atelier.store.get(ref)
    assert edited.origin == "edited" and edited.tool_call["args"]["references"]  # the second image is a reference
    assert server.atelier.store.get(edited.parent).filename == "sky.png"  # the first is the scene

    data_url = "data:image/png;base64," + base64.b64encode(scene).decode()
    raw = httpx.post(server.base + "/v1/images/edits", timeout=300,
                     json={"prompt": "make it night", "n": 2, "images": [{"image_url": data_url}]})
    assert raw.status_code == 200, raw.text
    assert len(raw.json()["data"]) == 2


@pytest.mark.parametrize("call, status, param, words", [
    (lambda c: c.images.generate(model="dall-e-3", prompt="a cat"), 404, "model", "does not exist"),
    (lambda c: c.images.generate(prompt="a cat", size="huge"), 400, "size", "WIDTHxHEIGHT"),
    (lambda c: c.images.generate(prompt="a cat", n=9), 400, None, "n"),
    (lambda c: c.images.generate(prompt="a cat", output_format="jpeg"), 400, "output_format", "PNG"),
    (lambda c: c.images.edit(image=("a.png", _png(), "image/png"), prompt="x", mask=("m.png", _png(), "image/png")),
     400, "mask", "mask is not supported"),
    (lambda c: c.images.edit(image=("a.png", b"not an image at all", "image/png"), prompt="x"), 400, None,
     "a.png"),
])
def test_bad_requests_are_one_clear_line(server, call, status, param, words):
    with pytest.raises(openai.APIStatusError) as info:
        call(server.client)
    err = info.value
    assert err.status_code == status
    message = err.body["message"] if "message" in err.body else err.body["error"]["message"]
    assert words in message and "\n" not in message
    if param:
        assert (err.body.get("param") or err.body.get("error", {}).get("param")) == param


def test_a_refused_prompt_is_a_content_policy_error_and_makes_nothing(server):
    before = len(server.atelier.store.all_versions())
    with pytest.raises(openai.BadRequestError) as info:
        server.client.images.generate(prompt="a nude photo of a naked woman, explicit")
    assert info.value.body["code"] == "content_policy_violation"
    assert len(server.atelier.store.all_versions()) == before


def test_a_face_changing_edit_of_real_people_needs_consent_the_api_cannot_ask(server, face_photos):
    with Image.open(face_photos["group"]) as im:
        im = im.convert("RGB")
        im.thumbnail((320, 320))
        buf = io.BytesIO()
        im.save(buf, format="JPEG", quality=92)
    with pytest.raises(openai.BadRequestError) as info:
        server.client.images.edit(image=("group.jpg", buf.getvalue(), "image/jpeg"),
                                  prompt="make them all look twenty years older")
    assert info.value.body["code"] == "consent_required"
    assert not [v for v in server.atelier.store.all_versions() if v.origin == "edited" and
                (v.tool_call or {}).get("args", {}).get("instruction", "").startswith("make them all look twenty")]


def test_keys_are_required_when_configured(tmp_path):
    atelier = _atelier(tmp_path)
    with LoopbackServer(create_app(atelier, ServerOptions(api_keys=load_api_keys(spec=f"{KEY}=alice")))) as srv:
        anonymous = openai.OpenAI(base_url=srv.base + "/v1", api_key="wrong-key-000", max_retries=0)
        with pytest.raises(openai.AuthenticationError):
            anonymous.images.generate(prompt="a cat")
        alice = openai.OpenAI(base_url=srv.base + "/v1", api_key=KEY, max_retries=0, timeout=300)
        resp = alice.images.generate(prompt="a cat on a windowsill")
        ref = resp.model_extra["atelier"]["images"][0]["ref"]
        assert atelier.store.get(ref).owner == "alice"


# -- the remote engine -----------------------------------------------------------------------------


def test_remote_engine_draws_on_a_second_atelier_and_seals_here(tmp_path):
    gpu = _atelier(tmp_path / "gpu", limits={"per_user": "1000/minute"})
    with LoopbackServer(create_app(gpu, ServerOptions())) as backend:
        front = _atelier(tmp_path / "front", engine={"kind": "openai-images", "base_url": backend.base + "/v1",
                                                     "model": "atelier-tiny"})
        session = front.session("t-remote")
        made = session.call_tool("generate_image", {"prompt": "a lighthouse at dusk", "aspect_ratio": "16:9"})
        assert made.error is None and len(made.images) == 1
        # drawn by the backend (its store and audit log have it), sealed and stored here
        assert [v for v in gpu.store.all_versions() if v.origin == "generated"]
        assert [e for e in gpu.services.audit.events(event="tool_call")]
        local = front.store.get(made.images[0].ref)
        assert local.origin == "generated" and local.metadata.get("watermark_id")

        photo = session.upload(_png((180, 140, 120), (96, 96)), filename="wall.png")
        edited = session.call_tool("edit_image", {"image": photo.ref, "instruction": "paint the wall green"})
        assert edited.error is None and len(edited.images) == 1
        assert front.store.get(edited.images[0].ref).parent == photo.ref
        assert [v for v in gpu.store.all_versions() if v.origin == "edited"]
        front.close()


def test_remote_engine_that_is_down_is_one_line(tmp_path):
    front = _atelier(tmp_path, engine={"kind": "openai-images", "base_url": f"http://127.0.0.1:{_free_port()}/v1",
                                       "model": "atelier-tiny", "timeout_s": 5})
    result = front.session("t-down").call_tool("generate_image", {"prompt": "a cat"})
    assert result.error is not None and "cannot be reached" in result.error.message
    assert "\n" not in result.error.message
    from tools.engines import get_engine

    with pytest.raises(EngineError):
        get_engine(front.profile.engine).generate("a cat", width=64, height=64, seed=1)
    front.close()


def test_a_json_edit_with_a_wrong_images_value_or_size_stores_nothing(server):
    before = len(server.atelier.store.all_versions())
    for body in ({"prompt": "x", "images": True}, {"prompt": "x", "image": 123}):
        raw = httpx.post(server.base + "/v1/images/edits", json=body, timeout=60)
        assert raw.status_code == 400 and raw.json()["error"]["param"] == "images"
    data_url = "data:image/png;base64," + base64.b64encode(_png()).decode()
    raw = httpx.post(server.base + "/v1/images/edits", timeout=60,
                     json={"prompt": "x", "size": "abc", "images": [{"image_url": data_url}]})
    assert raw.status_code == 400 and raw.json()["error"]["param"] == "size"
    assert len(server.atelier.store.all_versions()) == before  # checked before the upload was stored
