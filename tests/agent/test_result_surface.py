"""What a chat shows of a turn, as the agent gives it to every surface: the line under each image,
the buttons after a failed face check, the versions in words, the faces a consent question is
about, and a stop that ends planning at once."""

from __future__ import annotations

import asyncio
import io
import threading

import pytest
from agent_helpers import call
from PIL import Image

from agent.answers import result_line
from agent.planners.base import PlannerReply, ToolCall
from agent.planners.scripted import ScriptedModel
from agent.resolver import Facts
from agent.turn import CallRecord, StatusEvent
from tools.schemas import FaceCheck, ToolResult


def _photo(size=(96, 64), colour=(70, 110, 160)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, format="PNG")
    return buf.getvalue()


def test_the_line_under_an_image_says_size_change_each_person_drift_and_watermark():
    facts = Facts.of([{"ref": "img_aaaaaaaaaaaa", "origin": "upload"},
                      {"ref": "img_bbbbbbbbbbbb", "parent": "img_aaaaaaaaaaaa", "origin": "edited",
                       "tool_call": {"name": "edit_image", "args": {"instruction": "add a red scarf"}}}])
    faces = [FaceCheck(face=0, distance=0.21, same_person=True, box=(10, 10, 30, 30)),
             FaceCheck(face=1, distance=0.71, same_person=False, box=(50, 10, 70, 30)),
             FaceCheck(face=2, distance=None, same_person=False, box=(90, 10, 110, 30))]
    result = ToolResult(tool="edit_image", images=["img_bbbbbbbbbbbb"], size=(128, 64), faces=faces,
                        drift={"realigned": 1.0, "global_shift_px": 4.2, "pasted_back": 0.8},
                        watermark_ids=["0123456789ab"])
    record = CallRecord(name="edit_image", args={"image": "img_aaaaaaaaaaaa", "instruction": "add a red scarf"},
                        result=result)
    assert result_line(record, facts, "img_bbbbbbbbbbbb") == (
        "#2 (from #1) · 128×64 · edited: add a red scarf"
        " · face 1 (the person on the left) kept (distance 0.21)"
        " · face 2 (the person in the middle) NOT kept (distance 0.71)"
        " · face 3 (the person on the right) LOST"
        " · drift corrected: re-aligned 4 px, 80% kept from the original"
        " · watermark 0123456789ab")


def test_a_lost_face_is_said_in_the_answer_and_offers_another_try_and_the_source(make_app, group_photo):
    app = make_app()
    session = app.session("t-lost")
    result = session.send("/edit make the sky stormy", images=[group_photo])
    record = result.tool_calls[0]
    assert record.result.ok and any(f.distance is None for f in record.result.faces)  # random weights lose faces
    source = record.args["image"]
    assert "lost in the result" in result.answer and "#1" in result.answer
    image = result.images[0]
    assert image.number == 2 and image.line.startswith("#2 (from #1) · ") and "LOST" in image.line
    assert "watermark " in image.line and "img_" not in image.line
    retry, back = result.followups
    assert (retry.kind, retry.label, retry.call["name"]) == ("retry", "Try again", "edit_image")
    assert retry.call["args"]["image"] == source and retry.call["args"]["instruction"] == "make the sky stormy"
    assert (back.kind, back.label, back.ref) == ("back", "Back to #1", source)
    again = session.call_tool(retry.call["name"], retry.call["args"])  # the button: the same edit of #1
    assert app.store.get(again.images[0].ref).parent == source and again.images[0].number == 3


def test_a_result_whose_faces_are_kept_offers_no_followups(make_app):
    session = make_app().session("t-kept")
    made = session.send("/relight warm left", images=[_photo()])
    assert made.followups == []
    assert made.images[0].line.startswith("#2 (from #1) · 192×128 · relit: warm (3200 K) light from the left")


def test_the_versions_are_numbered_and_said_in_words(make_app):
    session = make_app().session("t-versions")
    session.send("/generate a mountain lake")
    session.send("/relight warm left")
    session.send("/undo")
    session.send("/adjust exposure=+1")
    entries = session.timeline()
    assert [(e.number, e.made, e.parent_number, e.current) for e in entries] == [
        (1, "generated: a mountain lake", None, False),
        (2, "relit: warm (3200 K) light from the left", 1, False),
        (3, "adjusted: exposure +1 stop", 1, True),
    ]
    assert session.image_line(entries[1].ref).startswith("#2 · ")


def test_a_consent_question_carries_each_face_with_its_place_and_box(make_app, group_photo):
    session = make_app().session("t-consent-faces")
    asked = session.send("/edit make them all look 30 years older", images=[group_photo])
    question = asked.consent
    assert question is not None and question.faces
    assert [f.key for f in question.faces] == question.people  # the same people, in the same order
    labels = [f.label for f in question.faces]
    assert all(label in question.question for label in labels)  # the question names them the same way
    assert labels[0].startswith("face 1 (the person on the left")
    upload = Image.open(io.BytesIO(group_photo))
    lefts = [f.box[0] for f in question.faces]
    assert lefts == sorted(lefts)  # numbered left to right
    for face in question.faces:
        left, top, right, bottom = face.box
        assert 0 <= left < right <= upload.width and 0 <= top < bottom <= upload.height
    assert session.pending_consent.faces == question.faces  # a reopened chat gets them too


def _first_status(events, startswith: str):
    for event in events:
        if isinstance(event, StatusEvent) and event.text.startswith(startswith):
            return event
    return None


def test_a_stop_while_planning_ends_the_turn_and_runs_nothing(make_app):
    planner = ScriptedModel([call("generate_image", prompt="a fox")], think_s=600)
    app = make_app(planner)
    session = app.session("t-stop-plan")
    events = []
    said = threading.Event()

    def turn():
        for event in session.stream("a fox"):
            events.append(event)
            if isinstance(event, StatusEvent) and event.text.startswith("planning (this planner takes"):
                said.set()

    worker = threading.Thread(target=turn)
    worker.start()
    assert said.wait(120), "the planner's status never came"
    session.cancel()
    worker.join(120)
    assert not worker.is_alive()
    result = events[-1].result
    assert result.tool_calls == [] and result.images == [] and result.answer == "Stopped."
    assert session.history() == []
    planner.think_s = 0  # the chat goes on: the next turn plans and runs
    assert session.send("a fox").images


class _StuckPlanner:
    """A model call that cannot be interrupted (llama.cpp evaluating a long prompt): it ends only
    when the test lets it."""

    def __init__(self):
        self.release = threading.Event()
        self.entered = threading.Event()

    def __call__(self, messages):
        self.entered.set()
        self.release.wait(120)
        return PlannerReply(tool_calls=[ToolCall("generate_image", {"prompt": "a fox"})])


def test_a_stopped_chat_does_not_wait_for_a_model_call_that_cannot_be_interrupted(make_app):
    planner = _StuckPlanner()
    session = make_app(ScriptedModel(planner)).session("t-stop-stuck")

    async def main():
        async def consume():
            async for _ in session.astream("a fox"):
                pass

        task = asyncio.create_task(consume())
        assert await asyncio.to_thread(planner.entered.wait, 120)
        task.cancel()  # the stop button
        with pytest.raises(asyncio.CancelledError):
            await task
        assert session.stopping  # the chat's turn ended while the model call still runs
        planner.release.set()
        await session.wait_stopped()
        assert not session.stopping

    asyncio.run(main())
    # what the model planned after the stop was not run
    assert session.history() == []
    assert session.messages()[-1] == {"role": "assistant", "content": "Stopped."}
    assert session.send("/generate a paper lantern").images
