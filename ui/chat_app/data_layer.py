"""Thread persistence for the chat app: Chainlit's SQLAlchemy data layer on SQLite (a file under
the data root) or on PostgreSQL (`store.url` / `store.threads`, shared by every chat-app process of
a deployment), and a storage provider that keeps element files (the images shown in a thread) on
local disk or any fsspec URL (`store.files`).

Chainlit ships the data layer but not its schema; `ensure_schema` creates the tables it needs
(`schema.sql`, the upstream DDL written for SQLite; `schema_postgres.sql`, the upstream DDL for
PostgreSQL with the columns chainlit 2.12 writes). The storage provider's read URLs point at a
route the app adds to Chainlit's FastAPI server (`install_file_route`), so a resumed thread
shows its images without any cloud bucket.
"""

from __future__ import annotations

import asyncio
import json
import mimetypes
import os
import sqlite3
import tempfile
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import quote

import fsspec
from chainlit.data.sql_alchemy import SQLAlchemyDataLayer
from chainlit.data.storage_clients.base import BaseStorageClient
from fsspec.implementations.local import LocalFileSystem

from tools.dbfile import connect_postgres, create_postgres_tables, is_postgres

FILES_ROUTE = "/atelier/files"
_JSON_LIST_COLUMNS = ("tags", "thread_tags", "step_tags")


def schema_sql(dialect: str = "sqlite") -> str:
    name = "schema_postgres.sql" if dialect == "postgresql" else "schema.sql"
    return (resources.files("ui.chat_app") / name).read_text(encoding="utf-8")


def ensure_schema(db: str | os.PathLike) -> None:
    """Create the data layer's tables (idempotent) in a SQLite file or a Postgres database."""
    if is_postgres(db):
        pool = connect_postgres(str(db), "chat threads", max_size=1)
        try:  # the whole script in one statement (no parameters)
            create_postgres_tables(pool, "chat threads", (schema_sql("postgresql"),))
        finally:
            pool.close()
        return
    path = Path(db)
    path.parent.mkdir(parents=True, exist_ok=True)
    with sqlite3.connect(path) as conn:
        conn.executescript(schema_sql())


def sqlalchemy_url(db: str | os.PathLike) -> str:
    """The async SQLAlchemy URL of a thread database: aiosqlite for a file, psycopg 3 for Postgres."""
    if is_postgres(db):
        return "postgresql+psycopg://" + str(db).split("://", 1)[1]
    return f"sqlite+aiosqlite:///{Path(db).resolve()}"


class LocalStorageClient(BaseStorageClient):
    """Element files under a root: a local directory, or any fsspec URL (`s3://bucket/chat-files`)
    that every chat-app process of a deployment shares (`store.files`). Read URLs are served by
    the app's file route, so no bucket needs to be public."""

    def __init__(self, root: str | os.PathLike, url_prefix: str = FILES_ROUTE):
        self.fs, self.root = fsspec.core.url_to_fs(str(root))
        self.local = isinstance(self.fs, LocalFileSystem)
        if self.local:
            self.root = str(Path(self.root).resolve())
        self.fs.makedirs(self.root, exist_ok=True)
        self.url_prefix = url_prefix.rstrip("/")

    def path_for(self, object_key: str) -> str:
        """The file of a key in the storage's file system; KeyError for keys that would leave the root."""
        parts = object_key.split("/")
        if not object_key or "\\" in object_key or "\x00" in object_key or any(p in ("..", ".", "") for p in parts):
            raise KeyError(object_key)
        return self.root.rstrip("/") + "/" + "/".join(parts)

    def read_bytes(self, object_key: str) -> bytes | None:
        """The file of a key (None: no such file; KeyError: not a key of this storage)."""
        path = self.path_for(object_key)
        try:
            return self.fs.cat_file(path)
        except (FileNotFoundError, IsADirectoryError):
            return None

    def _write(self, path: str, data: bytes, overwrite: bool) -> None:
        if not overwrite and self.fs.exists(path):
            return
        parent = path.rsplit("/", 1)[0]
        self.fs.makedirs(parent, exist_ok=True)
        if not self.local:
            self.fs.pipe_file(path, data)  # object stores write a whole object at once
            return
        fd, tmp = tempfile.mkstemp(dir=parent, prefix=".tmp-")  # a reader never sees half a file
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
            await asyncio.to_thread(self.fs.rm_file, path)
        except (KeyError, FileNotFoundError):
            return False
        return True

    async def get_read_url(self, object_key: str) -> str:
        return f"{self.url_prefix}/{quote(object_key, safe='/')}"

    async def close(self) -> None:
        return None


class AtelierDataLayer(SQLAlchemyDataLayer):
    """The upstream SQLAlchemy layer, made to work on SQLite as well as PostgreSQL: on SQLite,
    lists and dicts are bound as JSON text (SQLite has no array or JSONB type) and read back as
    lists; on PostgreSQL the tags stay arrays (TEXT[]) and other lists and dicts are JSON."""

    async def execute_sql(self, query: str, parameters: dict):
        postgres = self.engine.dialect.name == "postgresql"
        bound = {
            key: json.dumps(value) if isinstance(value, (list, dict)) and not (postgres and key in _JSON_LIST_COLUMNS)
            else value
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
    db: str | os.PathLike, files_dir: str | os.PathLike, *, storage: LocalStorageClient | None = None
) -> AtelierDataLayer:
    """A data layer on a SQLite file or a `postgresql://` database (schema created) with element
    files under `files_dir` (or in the given storage client, the one the file route serves)."""
    ensure_schema(db)
    return AtelierDataLayer(
        conninfo=sqlalchemy_url(db),
        storage_provider=storage or LocalStorageClient(files_dir),
    )


def install_file_route(app, storage: LocalStorageClient) -> None:
    """Serve the storage provider's files at FILES_ROUTE on Chainlit's FastAPI app.

    Chainlit registers a catch-all route for its frontend, so the route goes first in the list.
    Keys are `<user id>/<element uuid>/<name>`: unguessable, and never a path outside the root.
    """
    from fastapi import HTTPException
    from fastapi.responses import FileResponse, Response
    from starlette.routing import Route

    async def serve_file(request):
        key = request.path_params["key"]
        try:
            path = storage.path_for(key)
        except KeyError:
            raise HTTPException(status_code=400, detail="invalid file key") from None
        if storage.local:
            if not Path(path).is_file():
                raise HTTPException(status_code=404, detail="file not found")
            return FileResponse(path)
        data = await asyncio.to_thread(storage.read_bytes, key)
        if data is None:
            raise HTTPException(status_code=404, detail="file not found")
        return Response(data, media_type=mimetypes.guess_type(key)[0] or "application/octet-stream")

    if any(getattr(r, "path", None) == f"{FILES_ROUTE}/{{key:path}}" for r in app.router.routes):
        return
    app.router.routes.insert(0, Route(f"{FILES_ROUTE}/{{key:path}}", serve_file, methods=["GET"]))
