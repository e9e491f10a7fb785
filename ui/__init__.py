"""The ways in: CLI, Chainlit chat app, OpenAI-compatible HTTP endpoint, MCP server.

Surfaces only talk to `agent`; they never reach into `tools` except for types and errors.
"""
