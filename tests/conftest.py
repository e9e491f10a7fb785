"""Fixtures shared by every room's tests. Keep this file small: add fixtures, don't remove others'."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

INSIGHTFACE_VERSION = "2.1"
SAMPLE_IMAGES = ("t1.jpg", "Tom_Hanks_54745.png")


def _cache_dir() -> Path:
    root = os.environ.get("ATELIER_TEST_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "atelier-tests")
    return Path(root) / f"insightface-{INSIGHTFACE_VERSION}"


@pytest.fixture(scope="session")
def face_photos() -> dict[str, Path]:
    """Real face photos, offline: the samples `insightface` ships in its wheel (it ships no models).

    `group`: t1.jpg, six people; `portrait`: Tom_Hanks_54745.png, one aligned face (112x112).
    Taken from an installed `insightface` if there is one, else from a cached copy of the wheel
    (fetched once with `pip download insightface==2.1 --no-deps`; pip's cache makes reruns offline).
    """
    spec = importlib.util.find_spec("insightface")
    if spec is not None and spec.submodule_search_locations:
        folder = Path(list(spec.submodule_search_locations)[0]) / "data" / "images"
        if all((folder / name).is_file() for name in SAMPLE_IMAGES):
            return {"group": folder / "t1.jpg", "portrait": folder / "Tom_Hanks_54745.png"}
    cache = _cache_dir()
    if not all((cache / name).is_file() for name in SAMPLE_IMAGES):
        cache.mkdir(parents=True, exist_ok=True)
        wheels = list(cache.glob("insightface-*.whl"))
        if not wheels:
            proc = subprocess.run(
                [sys.executable, "-m", "pip", "download", f"insightface=={INSIGHTFACE_VERSION}", "--no-deps",
                 "--only-binary=:all:", "-q", "-d", str(cache)],
                capture_output=True, text=True, timeout=300,
            )
            wheels = list(cache.glob("insightface-*.whl"))
            if proc.returncode != 0 or not wheels:
                pytest.fail(f"could not fetch the insightface sample photos: {proc.stderr.strip()[-300:]}")
        with zipfile.ZipFile(wheels[0]) as wheel:
            for name in SAMPLE_IMAGES:
                (cache / name).write_bytes(wheel.read(f"insightface/data/images/{name}"))
    return {"group": cache / "t1.jpg", "portrait": cache / "Tom_Hanks_54745.png"}


@pytest.fixture(scope="session", autouse=True)
def isolated_data_root(tmp_path_factory):
    """Every test (and every server or CLI it starts) writes under a temporary data root, never
    the user's ~/.atelier. The offline planner's GGUF, if already assembled there, is still used
    (`ATELIER_PLANNER__MODEL_PATH`), so the real-model tests do not re-assemble 1 GB."""
    from agent.planners.gguf_assets import cached_path
    from agent.config import load_profile

    saved = {k: os.environ.get(k) for k in ("ATELIER_HOME", "ATELIER_PLANNER__MODEL_PATH")}
    if not os.environ.get("ATELIER_PLANNER__MODEL_PATH"):
        model = cached_path(load_profile("offline").planner)
        if model.is_file():
            os.environ["ATELIER_PLANNER__MODEL_PATH"] = str(model)
    os.environ["ATELIER_HOME"] = str(tmp_path_factory.mktemp("atelier-home"))
    yield Path(os.environ["ATELIER_HOME"])
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


def _paste_face(picture, box, portrait, portrait_box):
    """`picture` with `portrait` pasted, scaled so that its face box lands on `box`
    (a face replaced by another person's, for identity and gallery tests)."""
    from PIL import Image

    left, top, right, _ = box
    pl, pt, pr, _ = portrait_box
    scale = (right - left) / (pr - pl)
    scaled = portrait.resize((round(portrait.width * scale), round(portrait.height * scale)), Image.LANCZOS)
    out = picture.copy()
    out.paste(scaled, (round(left - pl * scale), round(top - pt * scale)))
    return out


@pytest.fixture(scope="session")
def paste_face():
    return _paste_face


# -- PostgreSQL (the store tests run on it as well as on SQLite; see tests/postgres_server.py) -----
@pytest.fixture(scope="session")
def postgres_server():
    """The URL of a PostgreSQL server for the whole run (a role that may create databases)."""
    from postgres_server import throwaway_server

    url = os.environ.get("ATELIER_TEST_POSTGRES_URL")
    if url:
        yield url
        return
    required = os.environ.get("ATELIER_REQUIRE_POSTGRES") == "1"
    try:
        import psycopg  # noqa: F401
    except ImportError:
        if required:
            pytest.fail("ATELIER_REQUIRE_POSTGRES=1 but psycopg is not installed (the postgres extra)")
        pytest.skip("psycopg is not installed (pip install 'qwen-atelier[postgres]')")
    with throwaway_server() as started:
        if started is None:
            if required:
                pytest.fail("ATELIER_REQUIRE_POSTGRES=1 but no PostgreSQL server: set ATELIER_TEST_POSTGRES_URL "
                            "or install Debian's postgresql (`make postgres`)")
            pytest.skip("no PostgreSQL here (set ATELIER_TEST_POSTGRES_URL or install postgresql)")
        yield started


@pytest.fixture
def postgres_url(postgres_server):
    """A fresh, empty database on the test server for this test (dropped afterwards)."""
    from postgres_server import fresh_database

    with fresh_database(postgres_server) as url:
        yield url


@pytest.fixture(params=["sqlite", "postgres"])
def database(request, tmp_path):
    """A database URL maker for the store tests, once on SQLite files and once on PostgreSQL:
    `database("audit")` is a file under tmp_path (SQLite) or the one fresh Postgres database."""
    if request.param == "sqlite":
        return lambda name: str(tmp_path / f"{name}.sqlite")
    url = request.getfixturevalue("postgres_url")
    return lambda name: url
