"""The OpenAI-compatible planner against a small fake chat-completions server on loopback (FastAPI
under uvicorn), once on its own and once driving a whole turn."""

from __future__ import annotations

import json
import socket
import threading
import time

import pytest
import uvicorn
from agent_helpers import tiny_overrides
from fastapi import FastAPI, Request

from agent.config import PlannerSettings
from agent.planners.openai_compat import OpenAICompatPlanner
from agent.session import Atelier
from tools.errors import ModelUnavailableError
from tools.schemas import tool_json_schemas


class FakeServer:
    """Answers each POST /v1/chat/completions with the next scripted assistant message."""

    def __init__(self):
        self.replies: list[dict] = []
        self.requests: list[dict] = []
        app = FastAPI()

        @app.post("/v1/chat/completions")
        async def completions(request: Request):
            body = await request.json()
            self.requests.append(body)
            message = self.replies.pop(0) if self.replies else {"role": "assistant", "content": "ok"}
            finish = "tool_calls" if message.get("tool_calls") else "stop"
            return {"id": "chatcmpl-1", "object": "chat.completion", "created": int(time.time()),
                    "model": body["model"],
                    "choices": [{"index": 0, "message": message, "finish_reason": finish}],
                    "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}}

        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = sock.getsockname()[1]
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def __enter__(self):
        self.thread.start()
        deadline = time.time() + 10
        while not self.server.started and time.time() < deadline:
            time.sleep(0.02)
        return self

    def __exit__(self, *exc):
        self.server.should_exit = True
        self.thread.join(5)


def tool_call_message(name: str, arguments: str, call_id: str = "call_abc") -> dict:
    return {"role": "assistant", "content": None, "tool_calls": [
        {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}]}


@pytest.fixture
def server():
    with FakeServer() as fake:
        yield fake


def _planner(server, **extra) -> OpenAICompatPlanner:
    return OpenAICompatPlanner(PlannerSettings(kind="openai", model="qwen-test", base_url=server.base_url, **extra))


def test_tool_calls_text_and_malformed_arguments(server):
    planner = _planner(server)
    messages = [{"role": "system", "content": "plan"}, {"role": "user", "content": "a fox, 9:16"}]
    server.replies = [
        tool_call_message("generate_image", json.dumps({"prompt": "a fox", "aspect_ratio": "9:16"})),
        {"role": "assistant", "content": 'Sure.<tool_call>\n{"name": "revert", "arguments": {"image": "img_0123456789ab"}}\n</tool_call>'},
        tool_call_message("generate_image", '{"prompt": "a fox", '),
        {"role": "assistant", "content": "Just text."},
    ]
    reply = planner.chat(messages, tool_json_schemas())
    assert [(c.name, c.args, c.id) for c in reply.tool_calls] == [
        ("generate_image", {"prompt": "a fox", "aspect_ratio": "9:16"}, "call_abc")]
    sent = server.requests[0]
    assert sent["model"] == "qwen-test" and sent["messages"] == messages
    assert {t["function"]["name"] for t in sent["tools"]} >= {"generate_image", "revert"}

    native = planner.chat(messages, tool_json_schemas())  # a server that leaves <tool_call> text
    assert native.tool_calls[0].name == "revert" and native.text == "Sure."

    broken = planner.chat(messages, tool_json_schemas())
    assert broken.tool_calls == [] and broken.malformed

    assert planner.chat(messages, []).text == "Just text."
    assert "tools" not in server.requests[-1] or not server.requests[-1]["tools"]


def test_vision_planner_sends_images_as_data_urls(server, tmp_path):
    from PIL import Image

    path = tmp_path / "p.png"
    Image.new("RGB", (16, 16), (255, 0, 0)).save(path)
    planner = _planner(server, see_images=True)
    planner.chat([{"role": "user", "content": "what is this?", "image_paths": [str(path)]}], [])
    content = server.requests[0]["messages"][0]["content"]
    assert content[0]["type"] == "image_url" and content[0]["image_url"]["url"].startswith("data:image/png;base64,")
    assert content[1] == {"type": "text", "text": "what is this?"}


def test_a_server_that_is_down_is_a_clear_error():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    planner = OpenAICompatPlanner(PlannerSettings(kind="openai", model="m", base_url=f"http://127.0.0.1:{port}/v1"))
    with pytest.raises(ModelUnavailableError, match="planner server"):
        planner.chat([{"role": "user", "content": "hi"}], [])


def test_a_whole_turn_with_the_openai_planner(server, tmp_path):
    server.replies = [
        tool_call_message("generate_image", json.dumps({"prompt": "a lighthouse at dusk", "aspect_ratio": "9:16"})),
        # the next turn names no image: the turn works on the current one
        tool_call_message("relight_image", json.dumps({"light": "warm"}), call_id="call_def"),
    ]
    app = Atelier("tiny", tiny_overrides(tmp_path, planner={"kind": "openai", "model": "qwen-test",
                                                             "base_url": server.base_url}))
    try:
        session = app.session("oa-turn")
        result = session.send("phone wallpaper of a lighthouse at dusk")
        warmer = session.send("make it warmer")
    finally:
        app.close()
    # one model call per turn: the answer is composed from the result, not asked of the server
    assert len(server.requests) == 2 and result.planner_calls == 1
    [made] = result.images
    assert result.answer == f"Here is a new picture of a lighthouse at dusk ({made.width}x{made.height}, #1)."
    [generated] = result.tool_calls
    assert generated.name == "generate_image" and generated.args["aspect_ratio"] == "9:16" and generated.result.ok
    first = server.requests[0]
    assert first["model"] == "qwen-test" and {t["function"]["name"] for t in first["tools"]} >= {"generate_image"}
    assert "phone wallpaper of a lighthouse at dusk" in first["messages"][-1]["content"]

    second = server.requests[1]["messages"][-1]["content"]
    assert "#1 " in second and "(current)" in second and made.ref not in second  # images by number, never refs
    [relit] = warmer.tool_calls
    assert relit.name == "relight_image" and relit.args["image"] == made.ref and relit.result.ok
    assert warmer.answer.startswith("I relit #1") and "#2" in warmer.answer
