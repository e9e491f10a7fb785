"""Chat-model backends: one class per model source behind `ChatModel` (see base.py).

`build_planner(profile)` turns a profile's `planner` section into a backend; heavy imports
(llama.cpp, transformers, openai) happen only for the kind that is asked for.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from agent.planners.base import ChatModel, PlannerReply, ToolCall

if TYPE_CHECKING:
    from agent.config import Profile

__all__ = ["ChatModel", "PlannerReply", "ToolCall", "build_planner"]


def build_planner(profile: Profile) -> ChatModel:
    settings = profile.planner
    if settings.kind == "scripted":
        from agent.planners.scripted import ScriptedModel

        return ScriptedModel(think_s=settings.think_s)
    if settings.kind == "gguf":
        from agent.planners.gguf import GGUFPlanner

        return GGUFPlanner(settings)
    if settings.kind == "openai":
        from agent.planners.openai_compat import OpenAICompatPlanner

        return OpenAICompatPlanner(settings)
    if settings.kind == "transformers":
        from agent.planners.transformers_vl import TransformersVLPlanner

        from tools.shared_models import text_encoder_key

        return TransformersVLPlanner(settings, shared_key=text_encoder_key(profile.engine))
    raise ValueError(f"unknown planner kind {settings.kind!r}")
