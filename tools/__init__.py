"""Atelier's hands: image store, engines, image tools, identity, safety and provenance.

Everything here is usable without the agent: plain functions over pydantic models.
`tools` never imports `agent` or `ui`.
"""
