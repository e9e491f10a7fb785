"""Fixtures for the agent tests: the `tiny` profile (random-weight engines, 2 steps, 64 px) in a
temporary data root, with a scripted planner the test writes."""

from __future__ import annotations

import pytest
from agent_helpers import tiny_overrides

from agent.planners.scripted import ScriptedModel
from agent.session import Atelier


@pytest.fixture
def make_app(tmp_path):
    """make_app(script, root=None, **sections) -> Atelier on the tiny profile with a ScriptedModel."""
    apps = []

    def make(script=None, *, root=None, **sections) -> Atelier:
        planner = script if isinstance(script, ScriptedModel) else ScriptedModel(script)
        app = Atelier("tiny", tiny_overrides(root or tmp_path, **sections), planner=planner)
        apps.append(app)
        return app

    yield make
    for app in apps:
        app.close()


@pytest.fixture
def group_photo(face_photos) -> bytes:
    """A real photo of six people (the insightface sample), shrunk to keep the tiny engines fast."""
    import io

    from PIL import Image

    with Image.open(face_photos["group"]) as im:
        im = im.convert("RGB")
        im.thumbnail((320, 320))
        buf = io.BytesIO()
        im.save(buf, format="JPEG", quality=92)
    return buf.getvalue()
