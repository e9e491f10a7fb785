"""The Chainlit chat app: a thin adapter over the agent's Session API.

`atelier ui` calls `launch()`, which prepares the app's directory under the data root (Chainlit
config, thread database, element files, auth secret), then runs Chainlit in this process on
`ui/chat_app/app.py`. Chainlit reads its app root from the environment when it is first imported,
so nothing here imports chainlit at module level.
"""

from __future__ import annotations

import json
import os
import secrets
from pathlib import Path
from typing import Any

APP_MODULE = Path(__file__).with_name("app.py")

# environment the app module reads (set by `launch`, or by hand for `chainlit run app.py`)
ENV_PROFILE = "ATELIER_PROFILE"
ENV_OVERRIDES = "ATELIER_UI_OVERRIDES"
ENV_PASSWORD = "ATELIER_UI_PASSWORD"
ENV_USERNAME = "ATELIER_UI_USERNAME"


def ui_root(data_root: str | os.PathLike) -> Path:
    """Where the chat app keeps its own state: `<data root>/chat`."""
    return Path(data_root) / "chat"


def auth_secret(root: Path) -> str:
    """CHAINLIT_AUTH_SECRET if set, else a secret kept in the app directory (created once), so
    that sign-in tokens survive a restart."""
    given = os.environ.get("CHAINLIT_AUTH_SECRET")
    if given:
        return given
    path = root / ".auth_secret"
    if path.is_file() and path.read_text().strip():
        return path.read_text().strip()
    root.mkdir(parents=True, exist_ok=True)
    value = secrets.token_urlsafe(48)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(value)
    return value


def prepare_environment(
    profile_name: str | None, overrides: dict[str, Any], data_root: str, host: str, port: int
) -> Path:
    """Set the environment Chainlit and the app module read; returns the app directory."""
    root = ui_root(data_root)
    root.mkdir(parents=True, exist_ok=True)
    if profile_name:
        os.environ[ENV_PROFILE] = str(profile_name)
    os.environ[ENV_OVERRIDES] = json.dumps(overrides or {})
    os.environ["CHAINLIT_APP_ROOT"] = str(root)
    os.environ["CHAINLIT_HOST"] = host
    os.environ["CHAINLIT_PORT"] = str(port)
    os.environ["CHAINLIT_AUTH_SECRET"] = auth_secret(root)
    from importlib import resources

    readme = (resources.files("ui.chat_app") / "readme.md").read_text(encoding="utf-8")
    (root / "chainlit.md").write_text(readme, encoding="utf-8")  # the UI's "Readme" panel
    return root


def launch(profile_name: str | None, overrides: dict[str, Any], data_root: str, host: str, port: int) -> None:
    """Run the chat app until interrupted (blocks)."""
    prepare_environment(profile_name, overrides, data_root, host, port)
    from chainlit.cli import run_chainlit  # imported after CHAINLIT_APP_ROOT is set
    from chainlit.config import config

    config.run.headless = True  # never open a browser from a server
    run_chainlit(str(APP_MODULE))
