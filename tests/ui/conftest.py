"""Fixtures of the chat-app tests: a tiny-profile Chainlit server and headless Chromium.

Chainlit reads its app root from CHAINLIT_APP_ROOT when first imported, so it is pointed at a
temporary directory before any test imports it (nothing is written into the checkout).
"""

from __future__ import annotations

import atexit
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest

if "CHAINLIT_APP_ROOT" not in os.environ:
    os.environ["CHAINLIT_APP_ROOT"] = tempfile.mkdtemp(prefix="atelier-chainlit-")
    atexit.register(shutil.rmtree, os.environ["CHAINLIT_APP_ROOT"], ignore_errors=True)

REPO = Path(__file__).resolve().parents[2]
OUTPUT = REPO / "tests" / "output" / "ui"
CHROMIUM = os.environ.get("ATELIER_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class ChatServer:
    """`atelier ui --profile tiny` in a subprocess, on a free loopback port, with its own data root."""

    def __init__(self, home: Path, extra_env: dict[str, str] | None = None, args: list[str] | None = None):
        self.home = home
        home.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = home / "server.log"
        env = {k: v for k, v in os.environ.items() if not k.startswith(("ATELIER_", "CHAINLIT_"))}
        env.update({"ATELIER_HOME": str(home / "data"), "PYTHONUNBUFFERED": "1"})
        env.update(extra_env or {})
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "ui.cli", "ui", "--profile", "tiny", "--host", "127.0.0.1",
             "--port", str(self.port), *(args or [])],
            cwd=home, env=env, stdout=self._log, stderr=subprocess.STDOUT,
        )

    def wait_ready(self, timeout: float = 90) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"atelier ui exited ({self.proc.returncode}):\n{self.log()}")
            try:
                with urllib.request.urlopen(self.url + "/health", timeout=2) as resp:
                    if resp.status == 200:
                        return
            except OSError:
                time.sleep(0.5)
        raise RuntimeError(f"atelier ui did not start in {timeout}s:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-6000:]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()


@pytest.fixture(scope="session")
def chat_server(tmp_path_factory):
    server = ChatServer(tmp_path_factory.mktemp("chat-ui"))
    try:
        server.wait_ready()
        yield server
    finally:
        server.stop()


@pytest.fixture
def start_chat_server(tmp_path):
    """Start extra servers (e.g. with a password, or `--set` arguments) for one test; stopped afterwards."""
    servers: list[ChatServer] = []

    def start(extra_env: dict[str, str] | None = None, args: list[str] | None = None) -> ChatServer:
        server = ChatServer(tmp_path / f"server-{len(servers)}", extra_env, args)
        servers.append(server)
        server.wait_ready()
        return server

    yield start
    for server in servers:
        server.stop()


@pytest.fixture(scope="session")
def screenshot_dir() -> Path:
    OUTPUT.mkdir(parents=True, exist_ok=True)
    for old in OUTPUT.glob("*.png"):  # screenshots are of this run only
        old.unlink()
    return OUTPUT


# Module scope, not session: playwright's sync API keeps an asyncio loop running in the main
# thread while it is open, and asyncio tests in later modules (MCP, HTTP) cannot start theirs.
@pytest.fixture(scope="module")
def browser(screenshot_dir):
    playwright_api = pytest.importorskip("playwright.sync_api")
    if not Path(CHROMIUM).exists():
        pytest.skip(f"no Chromium at {CHROMIUM} (make browser)")
    with playwright_api.sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture
def page(browser, chat_server, request):
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    context.set_default_timeout(30_000)
    pg = context.new_page()
    yield pg
    OUTPUT.mkdir(parents=True, exist_ok=True)
    if getattr(request.node, "rep_call", None) is not None and request.node.rep_call.failed:
        pg.screenshot(path=str(OUTPUT / f"FAILED-{request.node.name}.png"), full_page=True)
    context.close()


@pytest.hookimpl(hookwrapper=True, tryfirst=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    setattr(item, f"rep_{rep.when}", rep)
