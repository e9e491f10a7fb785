"""Settings of the chat-app surfaces (OpenAI-compatible API, MCP)."""
