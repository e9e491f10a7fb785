"""What the chat-app surfaces add on top of a session: prints figures, asserts nothing.

    python bench/api_overhead.py [--profile tiny] [--turns 5]

Measures, on one machine and one profile:
- `GET /v1/models` round trips (the HTTP stack alone, openai client -> uvicorn -> FastAPI);
- a generate turn through `session.send` directly, through `POST /v1/chat/completions` (openai
  client, non-streaming and streaming: time to first chunk and to the end), and through MCP
  `generate_image` over stdio (SDK client -> `atelier mcp` subprocess);
- the difference between each surface and the direct call (the adapter's overhead).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import statistics
import sys
import tempfile
import threading
import time


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _median_ms(values: list[float]) -> str:
    return f"{statistics.median(values) * 1000:8.1f} ms (min {min(values) * 1000:.1f}, n={len(values)})"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--profile", default="tiny")
    parser.add_argument("--turns", type=int, default=5)
    args = parser.parse_args()

    import openai
    import uvicorn

    from agent import Atelier
    from agent.config import load_profile
    from ui.http_api import ServerOptions, create_app

    root = tempfile.mkdtemp(prefix="atelier-bench-api-")
    profile = load_profile(args.profile, {"store": {"root": root}, "limits": {"per_user": "100000/minute"}})
    atelier = Atelier(profile=profile)

    # warm up: build engines, planner, checkpointer
    atelier.session("warmup").send("a warm-up drawing")

    direct = []
    for i in range(args.turns):
        t0 = time.perf_counter()
        atelier.session(f"direct-{i}").send(f"a lighthouse, take {i}")
        direct.append(time.perf_counter() - t0)

    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(atelier, ServerOptions()), host="127.0.0.1", port=port,
                                           log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="x", max_retries=0, timeout=600)
    model = f"atelier-{profile.name}"

    models = []
    for _ in range(50):
        t0 = time.perf_counter()
        client.models.list()
        models.append(time.perf_counter() - t0)

    http, first_chunk, streamed = [], [], []
    for i in range(args.turns):
        t0 = time.perf_counter()
        client.chat.completions.create(model=model, messages=[{"role": "user", "content": f"a lighthouse, http {i}"}])
        http.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        first = None
        for chunk in client.chat.completions.create(
                model=model, stream=True, messages=[{"role": "user", "content": f"a lighthouse, stream {i}"}]):
            if first is None:
                first = time.perf_counter() - t0
        streamed.append(time.perf_counter() - t0)
        first_chunk.append(first)
    server.should_exit = True
    thread.join(timeout=30)

    mcp_calls, mcp_start = asyncio.run(_mcp(profile.name, root, args.turns))

    print(f"profile {profile.name}, {args.turns} turns each, {os.cpu_count()} CPUs")
    print(f"GET /v1/models round trip           {_median_ms(models)}")
    print(f"session.send (direct)               {_median_ms(direct)}")
    print(f"chat.completions (non-streaming)    {_median_ms(http)}")
    print(f"chat.completions (stream, total)    {_median_ms(streamed)}")
    print(f"chat.completions (stream, 1st chunk) {_median_ms(first_chunk)}")
    print(f"MCP generate_image over stdio       {_median_ms(mcp_calls)}")
    print(f"MCP server start + discover         {mcp_start:8.2f} s (a fresh process builds its engines lazily)")
    base = statistics.median(direct)
    print(f"overhead vs direct: http {1000 * (statistics.median(http) - base):+.1f} ms, "
          f"stream {1000 * (statistics.median(streamed) - base):+.1f} ms, "
          f"mcp {1000 * (statistics.median(mcp_calls) - base):+.1f} ms")
    return 0


async def _mcp(profile: str, root: str, turns: int) -> tuple[list[float], float]:
    from mcp import Client, StdioServerParameters

    params = StdioServerParameters(command=sys.executable,
                                   args=["-m", "ui.cli", "mcp", "--profile", profile, "--set", f"store.root={root}",
                                         "--set", "limits.per_user=100000/minute"],
                                   env={**os.environ, "ATELIER_HOME": root})
    t0 = time.perf_counter()
    async with Client(params) as client:  # 2026-07-28, found through server/discover
        start = time.perf_counter() - t0
        await client.call_tool("generate_image", {"prompt": "warm-up"})  # builds the engine in that process
        calls = []
        for i in range(turns):
            t0 = time.perf_counter()
            result = await client.call_tool("generate_image", {"prompt": f"a lighthouse, mcp {i}"})
            calls.append(time.perf_counter() - t0)
            assert not result.is_error, result.content
    return calls, start


if __name__ == "__main__":
    sys.exit(main())
