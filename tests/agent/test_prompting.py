"""The planner's messages: system prompt from data files, image list, current marker, history."""

from agent.prompting import build_messages, image_lines, load_prompt
from tools.store import ImageVersion

IMAGES = [
    {"ref": "img_aaaa0001", "origin": "upload", "desc": "uploaded photo of a woman in a red jacket"},
    {"ref": "img_aaaa0002", "origin": "edit_image", "parent": "img_aaaa0001", "desc": "jacket changed to green"},
]


def test_system_prompt_comes_from_prompt_files():
    msgs = build_messages(history=[], images=[], user_text="hi")
    assert msgs[0]["role"] == "system"
    assert load_prompt("system.md") in msgs[0]["content"]
    assert load_prompt("routing.md") in msgs[0]["content"]
    assert "adjust_image" in msgs[0]["content"] and "reframe_image" in msgs[0]["content"]
    assert load_prompt("examples.md") not in build_messages(user_text="hi", examples=False)[0]["content"]


def test_refs_listed_with_origin_parent_and_current_marked():
    msgs = build_messages(history=[], images=IMAGES, user_text="try black leather")
    last = msgs[-1]
    assert last["role"] == "user"
    assert "Message: try black leather" in last["content"]
    assert last["content"].endswith(load_prompt("reminder.md"))
    lines = [l for l in last["content"].splitlines() if l.startswith("#")]
    # images by number, never by ref: the resolver turns a number into the ref
    assert lines[0].startswith("#1 uploaded photo:") and "red jacket" in lines[0]
    assert "(current)" not in lines[0]
    assert lines[1].startswith("#2 edited from #1:") and lines[1].endswith("(current)")
    assert "img_" not in last["content"]


def test_photos_sent_with_the_message_are_marked():
    msgs = build_messages(history=[], images=IMAGES, user_text="relight this", attached=["img_aaaa0002"])
    line = [l for l in msgs[-1]["content"].splitlines() if l.startswith("#2")][0]
    assert "sent with this message" in line


def test_explicit_current_and_store_versions_described_from_tool_call():
    versions = [
        ImageVersion(ref="img_bbbb0001", sha256="0" * 64, origin="upload", width=8, height=8, filename="me.jpg"),
        ImageVersion(ref="img_bbbb0002", sha256="1" * 64, origin="edited", parent="img_bbbb0001", width=8, height=8,
                     tool_call={"name": "relight_image", "args": {"image": "img_bbbb0001", "description": "candlelight"}}),
        ImageVersion(ref="img_bbbb0003", sha256="2" * 64, origin="generated", width=8, height=8,
                     tool_call={"name": "generate_image", "args": {"prompt": "a lighthouse at dusk"}}),
    ]
    lines = image_lines(versions, current="img_bbbb0001")
    assert lines[0] == "#1 uploaded photo: file me.jpg (current)"
    assert lines[1] == "#2 relit from #1: candlelight"
    assert lines[2] == "#3 generated: a lighthouse at dusk"


def test_no_images_is_said():
    msgs = build_messages(history=[], images=[], user_text="edit it")
    assert "Images in this chat: none." in msgs[-1]["content"]


HISTORY = [
    {"role": "system", "content": "old system, dropped"},
    {"role": "user", "text": "make her jacket green"},
    {"role": "assistant", "content": "", "tool_calls": [{"id": "c1", "name": "edit_image", "args": {"image": "img_aaaa0001", "instruction": "green jacket"}}]},
    {"role": "tool", "tool_call_id": "c1", "name": "edit_image", "content": "new image(s): img_aaaa0002"},
    {"role": "assistant", "content": "Done: img_aaaa0002"},
]


def test_earlier_turns_become_a_transcript_in_order():
    msgs = build_messages(history=HISTORY, images=IMAGES, user_text="now black")
    assert [m["role"] for m in msgs] == ["system", "user"]
    content = msgs[1]["content"]
    transcript = content.split("Conversation so far:\n")[1].split("\n\nMessage:")[0].splitlines()
    assert transcript == [
        "User: make her jacket green",
        'Assistant called edit_image {"image": "#1", "instruction": "green jacket"}',
        "Tool result: new image(s): #2",
        "Assistant: Done: #2",
    ]
    assert content.index("Images in this chat") < content.index("Conversation so far") < content.index("Message: now black")
    assert "old system" not in str(msgs)


def test_earlier_done_text_is_shown_as_the_call_that_made_the_image():
    images = [
        {"ref": "img_cccc0001", "origin": "upload", "desc": "photo of a street"},
        {"ref": "img_cccc0002", "origin": "relight_image", "parent": "img_cccc0001", "desc": "warm light"},
    ]
    history = [
        {"role": "user", "text": "warm light please"},
        {"role": "assistant", "text": "Done: img_cccc0002, warm light from the left."},
        {"role": "assistant", "text": "Anything else?"},
    ]
    content = build_messages(history=history, images=images, user_text="stronger")[-1]["content"]
    transcript = content.split("Conversation so far:\n")[1].split("\n\nMessage:")[0].splitlines()
    assert transcript == [
        "User: warm light please",
        "Assistant called relight_image on #1 -> #2",
        "Assistant: Anything else?",
    ]
    assert "Done" not in transcript[1]


def test_history_as_messages_kept_in_order_and_normalized():
    msgs = build_messages(history=HISTORY, images=IMAGES, user_text="now black", transcript=False)
    assert [m["role"] for m in msgs] == ["system", "user", "assistant", "tool", "assistant", "user"]
    assert msgs[1]["content"] == "make her jacket green"
    call = msgs[2]["tool_calls"][0]
    assert call["function"]["name"] == "edit_image"
    assert '"instruction": "green jacket"' in call["function"]["arguments"]
    assert msgs[3]["tool_call_id"] == "c1"
    assert "Message: now black" in msgs[-1]["content"] and "#2 edited from #1" in msgs[-1]["content"]


def test_after_tool_results_the_current_turn_stays_as_messages():
    history = [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "Hello!"},
        {"role": "user", "content": "brighter"},
        {"role": "assistant", "content": "", "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "adjust_image", "arguments": "{\"image\": \"img_aaaa0001\"}"}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "new image(s): img_aaaa0002"},
    ]
    msgs = build_messages(history=history, images=IMAGES, user_text=None)
    assert [m["role"] for m in msgs] == ["system", "user", "assistant", "tool"]
    assert msgs[1]["content"].startswith("Images in this chat")
    assert "User: hi\nAssistant: Hello!" in msgs[1]["content"] and "Message: brighter" in msgs[1]["content"]
    assert msgs[2]["tool_calls"][0]["function"]["name"] == "adjust_image"
    assert msgs[3]["tool_call_id"] == "c1"
    assert history[2]["content"] == "brighter"  # the caller's history is not modified


def test_history_trimmed_without_dangling_tool_results():
    history = []
    for i in range(10):
        history += [
            {"role": "user", "content": f"u{i}"},
            {"role": "assistant", "content": "", "tool_calls": [{"id": f"c{i}", "name": "revert", "args": {}}]},
            {"role": "tool", "tool_call_id": f"c{i}", "content": "ok"},
        ]
    msgs = build_messages(history=history, images=[], user_text="next", max_history=4, transcript=False)
    body = msgs[1:-1]
    assert len(body) <= 4 and body[0]["role"] != "tool"
    assert body[-1]["content"] == "ok" and body[0]["role"] in ("assistant", "user")
    short = build_messages(history=history, images=[], user_text="next", max_history=4)
    assert "u9" in short[1]["content"] and "u0" not in short[1]["content"]
