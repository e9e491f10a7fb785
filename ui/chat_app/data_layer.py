"""Thread persistence for the chat app: Chainlit's SQLAlchemy data layer on SQLite, and a
storage provider that keeps element files (the images shown in a thread) on local disk.

Chainlit ships the data layer but not its schema; `ensure_schema` creates the tables it needs
(`schema.sql`, the upstream DDL written for SQLite). The storage provider's read URLs point at a
route the app adds to Chainlit's FastAPI server (`install_file_route`), so a resumed thread
shows its images without any cloud bucket.
"""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import tempfile
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import quote

from chainlit.data.sql_alchemy import SQLAlchemyDataLayer
from chainlit.data.storage_clients.base import BaseStorageClient

FILES_ROUTE = "/atelier/files"
_JSON_LIST_COLUMNS = ("tags", "thread_tags", "step_tags")


def schema_sql() -> str:
    return (resources.files("ui.chat_app") / "schema.sql").read_text(encoding="utf-8")


def ensure_schema(db_path: str | os.PathLike) -> None:
    """Create the data layer's tables in a SQLite file (idempotent)."""
    path = Path(db_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with sqlite3.connect(path) as conn:
        conn.executescript(schema_sql())


class LocalStorageClient(BaseStorageClient):
    """Element files under a local directory; read URLs are served by the app's file route."""

    def __init__(self, root: str | os.PathLike, url_prefix: str = FILES_ROUTE):
        self.root = Path(root).resolve()
        self.root.mkdir(parents=True, exist_ok=True)
        self.url_prefix = url_prefix.rstrip("/")

    def path_for(self, object_key: str) -> Path:
        """The file of a key; raises KeyError for keys that would leave the root."""
        parts = object_key.split("/")
        if not object_key or "\\" in object_key or "\x00" in object_key or any(p in ("..", ".", "") for p in parts):
            raise KeyError(object_key)
        path = (self.root / Path(*parts)).resolve()
        if self.root not in path.parents:
            raise KeyError(object_key)
        return path

    def _write(self, path: Path, data: bytes, overwrite: bool) -> None:
        if path.exists() and not overwrite:
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)

    async def upload_file(
        self,
        object_key: str,
        data: bytes | str,
        mime: str = "application/octet-stream",
        overwrite: bool = True,
        content_disposition: str | None = None,
    ) -> dict[str, Any]:
        payload = data.encode("utf-8") if isinstance(data, str) else bytes(data)
        path = self.path_for(object_key)
        await asyncio.to_thread(self._write, path, payload, overwrite)
        return {"object_key": object_key, "url": await self.get_read_url(object_key)}

    async def delete_file(self, object_key: str) -> bool:
        try:
            path = self.path_for(object_key)
            await asyncio.to_thread(path.unlink)
        except (KeyError, FileNotFoundError):
            return False
        return True

    async def get_read_url(self, object_key: str) -> str:
        return f"{self.url_prefix}/{quote(object_key, safe='/')}"

    async def close(self) -> None:
        return None


class AtelierDataLayer(SQLAlchemyDataLayer):
    """The upstream SQLAlchemy layer, made to work on SQLite: lists and dicts are bound as JSON
    text (SQLite has no array or JSONB type) and read back as lists."""

    async def execute_sql(self, query: str, parameters: dict):
        bound = {
            key: json.dumps(value) if isinstance(value, (list, dict)) else value
            for key, value in parameters.items()
        }
        return await super().execute_sql(query, bound)

    def clean_result(self, obj):
        obj = super().clean_result(obj)
        if isinstance(obj, dict):
            for key in _JSON_LIST_COLUMNS:
                value = obj.get(key)
                if isinstance(value, str) and value.startswith("["):
                    try:
                        obj[key] = json.loads(value)
                    except json.JSONDecodeError:
                        pass
        return obj


def build_data_layer(
    db_path: str | os.PathLike, files_dir: str | os.PathLike, *, storage: LocalStorageClient | None = None
) -> AtelierDataLayer:
    """A data layer on a SQLite file (schema created) with element files under `files_dir`
    (or in the given storage client, the one the file route serves)."""
    ensure_schema(db_path)
    return AtelierDataLayer(
        conninfo=f"sqlite+aiosqlite:///{Path(db_path).resolve()}",
        storage_provider=storage or LocalStorageClient(files_dir),
    )


def install_file_route(app, storage: LocalStorageClient) -> None:
    """Serve the storage provider's files at FILES_ROUTE on Chainlit's FastAPI app.

    Chainlit registers a catch-all route for its frontend, so the route goes first in the list.
    Keys are `<user id>/<element uuid>/<name>`: unguessable, and never a path outside the root.
    """
    from fastapi import HTTPException
    from fastapi.responses import FileResponse
    from starlette.routing import Route

    async def serve_file(request):
        key = request.path_params["key"]
        try:
            path = storage.path_for(key)
        except KeyError:
            raise HTTPException(status_code=400, detail="invalid file key") from None
        if not path.is_file():
            raise HTTPException(status_code=404, detail="file not found")
        return FileResponse(path)

    if any(getattr(r, "path", None) == f"{FILES_ROUTE}/{{key:path}}" for r in app.router.routes):
        return
    app.router.routes.insert(0, Route(f"{FILES_ROUTE}/{{key:path}}", serve_file, methods=["GET"]))
