"""Scoring of `atelier eval planner` with a scripted planner (no model)."""

import json

import pytest

from agent.evals import EvalCaseError, check_arg, load_cases, run_eval, score_reply
from agent.planners.base import ChatModel, PlannerReply, ToolCall
from agent.planners.parsing import parse_tool_calls

CASES = [
    {"id": "gen", "images": [], "history": [], "message": "phone wallpaper of a forest",
     "expect": {"tool": "generate_image", "args": {"aspect_ratio": {"eq": "9:16"}, "prompt": {"contains_any": ["pine", "forest"]}}}},
    {"id": "relight", "images": [{"ref": "img_8b934b23", "desc": "portrait", "origin": "upload"}], "history": [],
     "message": "warm light from the right",
     "expect": {"tool": "relight_image", "args": {"image": {"eq": "img_8b934b23"}, "direction": {"eq": "right"}, "color_temperature": {"lt": 4000}}}},
    {"id": "hello", "images": [], "history": [{"role": "user", "text": "hi"}, {"role": "assistant", "text": "hello"}],
     "message": "what can you do?", "expect": {"tool": "none", "args": {}}},
    {"id": "crop", "images": [{"ref": "img_908e9eb2", "desc": "park", "origin": "upload"}], "history": [],
     "message": "crop the bottom third", "expect": {"tool": "adjust_image", "args": {"crop": {"len": 4}}}},
]


class Scripted(ChatModel):
    """Answers by the last user message; records what it was shown."""

    def __init__(self, answers):
        self.answers = answers
        self.seen = []

    def chat(self, messages, tools):
        self.seen.append((messages, tools))
        last = next(m["content"] for m in reversed(messages) if m["role"] == "user" and not m.get("repair"))
        for key, text in self.answers.items():
            if key in last:
                return parse_tool_calls(text)
        return PlannerReply(text="?")


def call(name, **args):
    return '<tool_call>' + json.dumps({"name": name, "arguments": args}) + '</tool_call>'


def test_all_right_scores_100_percent_and_reports_latency():
    planner = Scripted({
        "phone wallpaper": call("generate_image", prompt="misty pine forest", aspect_ratio="9:16"),
        # friendly arguments, no image named: the plan step translates and resolves them
        "warm light": call("relight_image", direction="right", light="warm"),
        "what can you do": "I can make and edit images.",
        "crop the bottom": call("adjust_image", cut_bottom=0.33),
    })
    report = run_eval(planner, CASES)
    assert report["accuracy"] == 1.0 and report["correct"] == 4 and report["failures"] == []
    assert set(report["per_tool"]) == {"generate_image", "relight_image", "none", "adjust_image"}
    assert report["latency_s"]["p90"] >= report["latency_s"]["p50"] >= 0
    messages, tools = planner.seen[1]
    assert "#1 uploaded photo: portrait (current)" in messages[-1]["content"]
    assert "img_8b934b23" not in messages[-1]["content"]  # images by number, never by ref
    assert {t["function"]["name"] for t in tools} >= {"generate_image", "revert"}
    relight = next(t["function"]["parameters"] for t in tools if t["function"]["name"] == "relight_image")
    assert "light" in relight["properties"] and "color_temperature" not in relight["properties"]  # friendly words
    hello_msgs = planner.seen[2][0]
    assert [m["role"] for m in hello_msgs] == ["system", "user"]
    assert "Conversation so far:\nUser: hi\nAssistant: hello" in hello_msgs[1]["content"]


def test_wrong_answers_are_counted_per_tool_with_reasons():
    planner = Scripted({
        "phone wallpaper": call("generate_image", prompt="a forest"),  # default 1:1, not 9:16
        "warm light": call("relight_image", direction="right", light="cool"),  # 7500 K
        "what can you do": call("generate_image", prompt="x"),
        "crop the bottom": call("adjust_image", crop=[0, 0, 1, 2]),  # invalid box, and again after the repair
    })
    report = run_eval(planner, CASES)
    assert report["correct"] == 0 and report["accuracy"] == 0.0
    reasons = {f["id"]: f["reason"] for f in report["failures"]}
    assert reasons["gen"].startswith("aspect_ratio: eq")
    assert reasons["relight"].startswith("color_temperature: lt")
    assert reasons["hello"] == "expected no tool call, got generate_image"
    # the invalid call went back once, came back the same, and the turn answered in words instead
    crop = next(f for f in report["failures"] if f["id"] == "crop")
    assert reasons["crop"] == "no tool call" and "crop" in crop["repair"]
    assert report["per_tool"]["generate_image"] == {"n": 1, "correct": 0, "accuracy": 0.0}


def test_only_the_first_call_counts_and_malformed_is_not_none():
    case = CASES[0]
    two = parse_tool_calls(call("revert", image="img_0123abcd") + call("generate_image", prompt="forest", aspect_ratio="9:16"))
    assert score_reply(case, two).reason == "wrong tool revert"
    bad = parse_tool_calls("<tool_call>just words</tool_call>")
    res = score_reply(CASES[2], bad)
    assert not res.ok and res.got == "malformed"


def test_matchers():
    assert check_arg({"between": [30, 60]}, 45) is None
    assert check_arg({"between": [30, 60]}, 61) is not None
    assert check_arg({"in": [90, -90]}, -90.0) is None
    assert check_arg({"contains_any": ["smil"]}, "make her SMILE softly") is None
    assert check_arg({"contains_any": ["beach"]}, "a forest") is not None
    assert check_arg({"eq": ["img_1b70ef04"]}, ["img_1b70ef04"]) is None
    assert check_arg({"eq": False}, 0) is not None
    assert check_arg({"len": 2}, ["a"]) is not None
    assert check_arg({"gt": 1}, "2") is None and check_arg({"gt": 1}, True) is not None
    with pytest.raises(EvalCaseError):
        check_arg({"approximately": 3}, 3)


def test_load_cases_reports_bad_lines(tmp_path):
    good = tmp_path / "c.jsonl"
    good.write_text(json.dumps(CASES[0]) + "\n\n" + json.dumps(CASES[2]) + "\n")
    assert [c["id"] for c in load_cases(good)] == ["gen", "hello"]
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": 1}\n')
    with pytest.raises(EvalCaseError, match="bad.jsonl:1"):
        load_cases(bad)
    with pytest.raises(EvalCaseError, match="does not exist"):
        load_cases(tmp_path / "nope.jsonl")


def test_a_call_the_plan_step_sends_back_gets_one_repair_round_and_both_scores_are_reported():
    case = {"id": "undo", "history": [], "message": "undo that",
            "images": [{"ref": "img_aaaa0001", "origin": "upload", "desc": "street"},
                       {"ref": "img_aaaa0002", "origin": "adjust_image", "parent": "img_aaaa0001", "desc": "+1 EV"}],
            "expect": {"tool": "revert", "args": {"image": {"eq": "img_aaaa0001"}}}}

    class FixesItself(ChatModel):
        def __init__(self):
            self.seen = []

        def chat(self, messages, tools):
            self.seen.append(messages)
            if messages[-1].get("repair"):  # told what was wrong: leaves the image out (undo)
                return PlannerReply(tool_calls=[ToolCall("revert", {})])
            return PlannerReply(raw='<tool_call>{"name": "revert", "arguments": {"image": "#7"}}</tool_call>',
                                tool_calls=[ToolCall("revert", {"image": "#7"})])

    planner = FixesItself()
    report = run_eval(planner, [case])
    assert report["correct"] == 1 and report["first_reply_correct"] == 0 and report["repaired"] == 1
    repair = planner.seen[1][-1]["content"]
    assert "this chat has images #1 to #2" in repair
    assert planner.seen[1][-2] == {"role": "assistant", "repair": True,
                                   "content": '<tool_call>{"name": "revert", "arguments": {"image": "#7"}}</tool_call>'}

    report = run_eval(FixesItself(), [case], repair=False)
    assert report["correct"] == 0 and report["repaired"] == 1
    assert report["failures"][0]["reason"] == "no tool call"  # the plan step answered instead


def test_a_revert_to_the_image_on_screen_is_answered_not_sent_back():
    case = {"id": "undo-current", "history": [], "message": "go back to the brighter one",
            "images": [{"ref": "img_aaaa0001", "origin": "upload", "desc": "street"},
                       {"ref": "img_aaaa0002", "origin": "adjust_image", "parent": "img_aaaa0001", "desc": "+1 EV"}],
            "expect": {"tool": "none", "args": {}}}
    planner = Scripted({"brighter": call("revert", image="#2")})
    report = run_eval(planner, [case])
    assert report["correct"] == 1 and len(planner.seen) == 1  # no repair round: the model cannot fix it
    assert report["repaired"] == 1


def test_attached_images_and_the_args_of_derived_versions_reach_the_plan_step():
    relit = {"ref": "img_bbbb0002", "origin": "relight_image", "parent": "img_bbbb0001", "desc": "warm light",
             "args": {"image": "img_bbbb0001", "color_temperature": 3200, "direction": "left", "intensity": 1.0}}
    images = [{"ref": "img_bbbb0001", "origin": "upload", "desc": "portrait"}, relit]
    stronger = {"id": "stronger", "history": [], "message": "stronger light", "images": images,
                "expect": {"tool": "relight_image", "args": {
                    "image": {"eq": "img_bbbb0001"}, "intensity": {"gt": 1.0}, "direction": {"eq": "left"},
                    "color_temperature": {"eq": 3200}}}}
    attached = {"id": "attached", "history": [], "message": "cool light on this one",
                "images": [*images, {"ref": "img_bbbb0003", "origin": "upload", "desc": "dog", "attached": True}],
                "expect": {"tool": "relight_image", "args": {"image": {"eq": "img_bbbb0003"}}}}
    planner = Scripted({"stronger": call("relight_image", strength="stronger"),
                        "this one": call("relight_image", light="cool")})
    report = run_eval(planner, [stronger, attached])
    assert report["correct"] == 2, report["failures"]
    shown = planner.seen[1][0][-1]["content"]
    line = next(x for x in shown.splitlines() if x.startswith("#3 "))
    assert "sent with this message" in line and "img_bbbb" not in shown


def test_the_request_screen_runs_first_and_a_refused_request_never_reaches_the_planner():
    from tools.safety import PromptScreener
    from tools.settings import SafetySettings

    case = {"id": "figure", "history": [], "message": "put barack obama next to me in this",
            "images": [{"ref": "img_aaaa0001", "origin": "upload", "desc": "selfie"}],
            "expect": {"tool": "none", "args": {}}}
    planner = Scripted({"obama": call("edit_image", image="img_aaaa0001", instruction="add Barack Obama")})
    screened = run_eval(planner, [case, CASES[0]], screener=PromptScreener(SafetySettings()))
    assert screened["correct"] == 1 and screened["refused_by_screen"] == 1
    assert ["Message: phone wallpaper of a forest" in m[0][-1]["content"] for m in planner.seen] == [True]
    assert screened["per_tool"]["none"]["correct"] == 1

    alone = run_eval(Scripted({"obama": call("edit_image", image="img_aaaa0001", instruction="add Barack Obama")}),
                     [case])
    assert alone["correct"] == 0 and alone["refused_by_screen"] == 0
    assert alone["failures"][0]["reason"] == "expected no tool call, got edit_image"


def test_a_case_without_images_whose_call_needs_one_is_answered_by_the_plan_step():
    case = {"id": "noimg", "history": [], "images": [], "message": "edit it so it looks more pro",
            "expect": {"tool": "none", "args": {}}}
    planner = Scripted({"more pro": call("edit_image", image="img_aaaa0001", instruction="more pro")})
    report = run_eval(planner, [case])
    # the plan step itself asks for an upload (the model is not asked again); that is the decision scored
    assert report["correct"] == 1 and report["first_reply_correct"] == 1 and report["repaired"] == 1
    assert len(planner.seen) == 1
