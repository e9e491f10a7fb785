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
