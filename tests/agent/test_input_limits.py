"""Issue 12: a turn's text has a length limit on every surface, and numbers no setting can hold
(seed 10**30, 1e400, NaN) end in a readable error, never a broken checkpoint."""

from __future__ import annotations

import time

import pytest
from agent_helpers import call

from agent.planners.scripted import ScriptedModel
from tools.errors import PromptTooLongError, ToolArgumentError


def test_a_message_over_the_limit_is_refused_before_anything_runs(make_app):
    planner = ScriptedModel()
    app = make_app(planner, limits={"max_prompt_chars": 50})
    session = app.session("long-text")
    with pytest.raises(PromptTooLongError, match=r"^the message is 51 characters long; the limit is 50"):
        session.send("x" * 51)
    with pytest.raises(PromptTooLongError):  # slash commands too, before they are parsed
        session.send("/generate " + "a fox " * 20)
    assert planner.calls == [] and session.messages() == []
    assert session.send("  " + "y" * 50 + "  ").error is None  # the limit is on the text, not its padding


def test_a_ten_megabyte_message_is_refused_at_once(make_app):
    session = make_app(ScriptedModel()).session("huge-text")
    started = time.monotonic()
    with pytest.raises(PromptTooLongError, match="the limit is 4,000"):
        session.send("/generate " + "a fox " * 1_750_000)  # shlex would take seconds on this
    assert time.monotonic() - started < 0.5


def test_direct_tool_calls_have_the_same_text_limit(make_app):
    app = make_app(ScriptedModel(), limits={"max_prompt_chars": 100})
    session = app.session("long-call")
    with pytest.raises(PromptTooLongError, match=r"^generate_image: prompt is 101 characters long"):
        session.call_tool("generate_image", {"prompt": "z" * 101})
    assert session.messages() == []


@pytest.mark.parametrize("command, message", [
    ("/generate a fox seed=1e400", "/generate: seed=1e400 is too large a number"),
    ("/generate a fox --seed " + "9" * 30, "/generate: seed=" + "9" * 30 + " is too large a number"),
    ("/generate a fox seed=" + "9" * 3900, "is too large a number"),
])
def test_a_slash_number_too_large_for_any_setting_is_a_clear_error(make_app, command, message):
    session = make_app(ScriptedModel()).session("slash-numbers")
    with pytest.raises(ToolArgumentError, match=message[:60].replace("+", r"\+")):
        session.send(command)
    assert session.messages() == []


def test_nan_in_a_slash_command_is_refused_by_the_contract(make_app):
    session = make_app(ScriptedModel()).session("slash-nan")
    made = session.send("/generate a lighthouse")
    assert made.images
    result = session.send("/adjust exposure=nan")
    assert result.error.code == "bad_arguments"
    assert result.error.message == "adjust_image: exposure_ev must be a number from -3 to 3 (got 'nan')"
    assert session.send("/adjust exposure=+1").images  # the session goes on


@pytest.mark.parametrize("args, problem", [
    ({"prompt": "x", "seed": 10**30}, "seed must be a whole number from 0 to 4294967295 (got '1000000000"),
    ({"prompt": "x", "seed": float("nan")}, "seed must be a whole number from 0 to 4294967295 (got 'nan')"),
    ({"prompt": "x", "count": float("inf")}, "count must be a whole number from 1 to 4 (got 'inf')"),
])
def test_unstorable_numbers_in_a_direct_call_are_argument_errors_not_crashes(make_app, args, problem):
    session = make_app(ScriptedModel()).session("call-numbers")
    result = session.call_tool("generate_image", args)  # before: TypeError: Integer exceeds 64-bit range
    assert result.error.code == "bad_arguments" and problem in result.error.message
    assert session.call_tool("generate_image", {"prompt": "a fox", "seed": 7}).images  # the thread is intact


def test_a_planner_that_asks_for_seed_10_to_the_30_gets_a_readable_answer(make_app):
    planner = ScriptedModel([call("generate_image", prompt="a fox", seed=10**30),
                             call("generate_image", prompt="a fox", seed=float("inf"))], then=None)
    app = make_app(planner)
    session = app.session("planner-numbers")
    result = session.send("a fox with a very big seed")
    said = [m["content"] for m in session.messages()]
    # the plan step's check asks the model to correct the first call, with the bound in the words
    assert any("seed must be a whole number from 0 to 4294967295" in text for text in said)
    # the corrected call (seed=inf) cannot run either: after the one repair round the turn answers
    # with the problem in plain words, and nothing ran
    assert result.error is None and result.tool_calls == [] and result.images == []
    assert result.answer == ("Sorry, I could not do that: generate_image: seed must be a whole number "
                             "from 0 to 4294967295 (got inf).")
    assert result.planner_calls == 2 and len(planner.calls) == 2
    assert said[-1] == result.answer  # every checkpoint of the turn was written


@pytest.mark.parametrize("command, message", [
    ("/adjust exposure=banana", "adjust_image: exposure_ev must be a number from -3 to 3 (got 'banana')"),
    ("/adjust contrast=9", "adjust_image: contrast must be a number from 0 to 3 (got 9)"),
    ("/relight direction=sideways",
     "relight_image: direction must be one of left, right, front, back, top, bottom, top-left, top-right "
     "(got 'sideways')"),
    ("/generate a fox count=two", "generate_image: count must be a whole number from 1 to 4 (got 'two')"),
    ("/adjust glow=3", "adjust_image: glow is not an argument here; the arguments are image, exposure_ev, "
                       "white_balance_k, contrast, saturation, rotate_deg, crop"),
])
def test_a_bad_slash_argument_is_one_sentence_naming_it_and_what_it_takes(make_app, command, message):
    session = make_app(ScriptedModel()).session("slash-words")
    assert session.send("/generate a lighthouse").images
    result = session.send(command)
    assert result.error.code == "bad_arguments" and result.error.message == message
    assert "Input should" not in result.error.message and "\n" not in result.error.message
