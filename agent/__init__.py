"""Atelier's brain: the LangGraph turn, chat-model backends, sessions and profiles.

    from agent import Atelier
    session = Atelier(profile="tiny").session("thread-1", user_id="me")
    result = session.send("make me a lighthouse at dusk, 9:16")
"""

from __future__ import annotations

__all__ = ["Atelier"]


def __getattr__(name: str):
    if name == "Atelier":
        from agent.session import Atelier

        return Atelier
    raise AttributeError(name)
