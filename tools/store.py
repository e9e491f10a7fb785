"""The image store: content-addressed versions with short refs and a history tree per session.

Layout under the root (a local path or any fsspec URL):

    blobs/ab/abcdef....png      the bytes of each version, named by their sha256
    versions/img_abcdef123456.json   one record per version (parent, tool call, size, metadata)
    sessions/<sha of session id>.jsonl   the refs of a session, in creation order
    staging/<id>.png (+ .json)  results of a tool that are not screened and sealed yet

Refs and filenames never become paths: a ref must match `img_<hex>` and session ids are hashed,
so nothing is ever written outside the root.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Literal

import fsspec
import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError
from pydantic import BaseModel, Field

from tools.errors import BadImageError, UnknownRefError
from tools.schemas import is_ref
from tools.settings import LimitSettings

ALLOWED_FORMATS = {"PNG": "png", "JPEG": "jpeg", "WEBP": "webp"}
Origin = Literal["upload", "generated", "edited"]


class ImageVersion(BaseModel):
    """One stored image version (a node of the session's history tree)."""

    ref: str
    sha256: str
    session: str | None = None
    parent: str | None = None
    origin: Origin = "upload"
    tool_call: dict[str, Any] | None = None  # {"name": ..., "args": {...}} that made it
    width: int
    height: int
    format: str = "png"
    filename: str | None = None  # original upload name (display only, never a path)
    created_at: float = Field(default_factory=time.time)
    metadata: dict[str, Any] = Field(default_factory=dict)  # seeds, identity scores, watermark id...


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def normalize_image(image: Image.Image) -> Image.Image:
    """Bring any decoded image to what the engines take: 8-bit RGB, upright."""
    image = ImageOps.exif_transpose(image) or image
    mode = image.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        arr = np.asarray(image, dtype=np.float64)
        peak = 65535.0 if mode.startswith("I;16") or arr.max() > 255 else 255.0
        arr = np.clip(arr / peak * 255.0 + 0.5, 0, 255).astype(np.uint8)
        image = Image.fromarray(arr, "L")
        mode = "L"
    if mode == "F":
        arr = np.asarray(image, dtype=np.float64)
        arr = np.clip(arr * (255.0 if arr.max() <= 1.0 else 1.0), 0, 255).astype(np.uint8)
        image, mode = Image.fromarray(arr, "L"), "L"
    if mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
        mode = image.mode
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, rgba)
    if image.mode != "RGB":
        image = image.convert("RGB")  # CMYK, YCbCr, L, 1, LAB...
    return image


def decode_upload(data: bytes, limits: LimitSettings, *, name: str = "upload") -> Image.Image:
    """Validate and decode uploaded bytes; raise BadImageError with one readable line."""
    if not data:
        raise BadImageError(f"{name}: the file is empty")
    if len(data) > limits.max_upload_bytes:
        raise BadImageError(
            f"{name}: {len(data) / 1e6:.1f} MB is over the {limits.max_upload_bytes / 1e6:.0f} MB upload limit"
        )
    try:
        probe = Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        raise BadImageError(f"{name}: not an image Atelier can read (use PNG, JPEG or WebP)") from None
    except Image.DecompressionBombError:
        raise BadImageError(f"{name}: too many pixels (possible decompression bomb)") from None
    except Exception as err:  # noqa: BLE001 - any decoder failure is a bad upload
        raise BadImageError(f"{name}: unreadable image ({err})") from None
    fmt = probe.format or "?"
    if fmt not in ALLOWED_FORMATS:
        raise BadImageError(f"{name}: {fmt} images are not supported; use PNG, JPEG or WebP")
    width, height = probe.size
    if width * height > limits.max_pixels or max(width, height) > limits.max_side:
        raise BadImageError(
            f"{name}: {width}x{height} is too large (limit {limits.max_pixels / 1e6:.0f} MP, "
            f"{limits.max_side} px a side)"
        )
    if width < 8 or height < 8:
        raise BadImageError(f"{name}: {width}x{height} is too small (at least 8x8)")
    try:
        probe.verify()  # structure and checksums (PNG CRCs)
        image = Image.open(io.BytesIO(data))
        image.load()  # full decode: truncated files fail here
    except Image.DecompressionBombError:
        raise BadImageError(f"{name}: too many pixels (possible decompression bomb)") from None
    except Exception as err:  # noqa: BLE001
        reason = "the file is truncated or corrupt" if "truncat" in str(err).lower() else f"corrupt image ({err})"
        raise BadImageError(f"{name}: {reason}") from None
    if getattr(image, "n_frames", 1) > 1:
        image.seek(0)
    return normalize_image(image)


def encode_png(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


class ImageStore:
    """Content-addressed image versions under a root (local path or fsspec URL)."""

    def __init__(self, root: str | os.PathLike, limits: LimitSettings | None = None, *, ref_length: int = 12):
        self.url = str(root)
        self.fs, self.root = fsspec.core.url_to_fs(self.url)
        self.limits = limits or LimitSettings()
        self.ref_length = ref_length
        self._lock = threading.Lock()
        self._local = self.fs.protocol in ("file", ("file", "local")) or "file" in (
            self.fs.protocol if isinstance(self.fs.protocol, tuple) else (self.fs.protocol,)
        )
        for sub in ("blobs", "versions", "sessions", "staging"):
            self.fs.makedirs(self._join(sub), exist_ok=True)

    # -- paths ---------------------------------------------------------------------------
    def _join(self, *parts: str) -> str:
        return "/".join([self.root.rstrip("/"), *parts])

    def _blob_path(self, sha: str) -> str:
        return self._join("blobs", sha[:2], f"{sha}.png" if len(sha) == 64 else sha)

    def _version_path(self, ref: str) -> str:
        return self._join("versions", f"{ref}.json")

    def _session_path(self, session: str) -> str:
        return self._join("sessions", hashlib.sha256(session.encode()).hexdigest()[:32] + ".jsonl")

    def _write_atomic(self, path: str, data: bytes) -> None:
        parent = path.rsplit("/", 1)[0]
        self.fs.makedirs(parent, exist_ok=True)
        if self._local:
            fd, tmp = tempfile.mkstemp(dir=parent, prefix=".tmp-")
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
            os.replace(tmp, path)
        else:
            with self.fs.open(path, "wb") as fh:
                fh.write(data)

    # -- writing -------------------------------------------------------------------------
    def ingest(
        self, data: bytes | os.PathLike | str, *, filename: str | None = None, session: str | None = None
    ) -> ImageVersion:
        """Validate an upload and store it as a root version (origin `upload`)."""
        if isinstance(data, (str, os.PathLike)):
            path = Path(data)
            filename = filename or path.name
            try:
                data = path.read_bytes()
            except OSError as err:
                raise BadImageError(f"{filename}: cannot read file ({err.strerror})") from None
        name = Path(filename).name if filename else "upload"
        image = decode_upload(data, self.limits, name=name)
        return self.put(image, session=session, origin="upload", filename=name)

    def put(
        self,
        image: Image.Image | bytes,
        *,
        session: str | None = None,
        parent: str | None = None,
        origin: Origin = "generated",
        tool_call: dict[str, Any] | None = None,
        metadata: dict[str, Any] | None = None,
        filename: str | None = None,
    ) -> ImageVersion:
        """Store an image (PIL image, or already-encoded PNG/JPEG/WebP bytes kept verbatim,
        e.g. a sealed file with its C2PA manifest) as a new version."""
        if parent is not None:
            self.get(parent)  # must exist
        if isinstance(image, Image.Image):
            data = encode_png(image)
            width, height, fmt = image.width, image.height, "png"
        else:
            data = bytes(image)
            with Image.open(io.BytesIO(data)) as probe:
                width, height = probe.size
                fmt = ALLOWED_FORMATS.get(probe.format or "", "png")
        sha = _sha(data)
        ref = "img_" + sha[: self.ref_length]
        with self._lock:
            if self.fs.exists(self._version_path(ref)):
                existing = self.get(ref)
                if session and existing.session != session:
                    self._append_session(session, ref)
                return existing
            self._write_atomic(self._blob_path(sha), data)
            version = ImageVersion(
                ref=ref, sha256=sha, session=session, parent=parent, origin=origin, tool_call=tool_call,
                width=width, height=height, format=fmt, filename=filename, metadata=metadata or {},
            )
            self._write_atomic(self._version_path(ref), version.model_dump_json().encode())
            if session:
                self._append_session(session, ref)
        return version

    def _append_session(self, session: str, ref: str) -> None:
        path = self._session_path(session)
        line = json.dumps({"ref": ref, "t": time.time()}) + "\n"
        if self._local:
            with open(path, "a", encoding="utf-8") as fh:
                fh.write(line)
        else:
            old = self.fs.cat_file(path).decode() if self.fs.exists(path) else ""
            self._write_atomic(path, (old + line).encode())

    # -- staging (results not yet screened and sealed) ------------------------------------
    def stage(self, image: Image.Image, meta: dict[str, Any] | None = None) -> str:
        sid = "stg_" + uuid.uuid4().hex[:16]
        self._write_atomic(self._join("staging", f"{sid}.png"), encode_png(image))
        self._write_atomic(self._join("staging", f"{sid}.json"), json.dumps(meta or {}).encode())
        return sid

    def _check_staged(self, sid: str) -> None:
        if not (sid.startswith("stg_") and sid[4:].isalnum() and len(sid) == 20):
            raise UnknownRefError(f"unknown staged result {sid!r}")

    def load_staged(self, sid: str) -> tuple[Image.Image, dict[str, Any]]:
        self._check_staged(sid)
        try:
            with self.fs.open(self._join("staging", f"{sid}.png"), "rb") as fh:
                image = Image.open(io.BytesIO(fh.read()))
                image.load()
            meta = json.loads(self.fs.cat_file(self._join("staging", f"{sid}.json")))
        except FileNotFoundError:
            raise UnknownRefError(f"staged result {sid} is gone") from None
        return image.convert("RGB"), meta

    def discard_staged(self, sid: str) -> None:
        self._check_staged(sid)
        for ext in ("png", "json"):
            path = self._join("staging", f"{sid}.{ext}")
            if self.fs.exists(path):
                self.fs.rm(path)

    # -- reading -------------------------------------------------------------------------
    def get(self, ref: str) -> ImageVersion:
        if not isinstance(ref, str) or not is_ref(ref):
            raise UnknownRefError(f"{ref!r} is not an image reference (expected img_ followed by hex digits)")
        try:
            raw = self.fs.cat_file(self._version_path(ref))
        except FileNotFoundError:
            raise UnknownRefError(f"no image {ref} in the store") from None
        return ImageVersion.model_validate_json(raw)

    def exists(self, ref: str) -> bool:
        return is_ref(ref) and self.fs.exists(self._version_path(ref))

    def read_bytes(self, ref: str) -> bytes:
        version = self.get(ref)
        return self.fs.cat_file(self._blob_path(version.sha256))

    def open(self, ref: str) -> Image.Image:
        """The image of a version, decoded to RGB."""
        image = Image.open(io.BytesIO(self.read_bytes(ref)))
        image.load()
        return image.convert("RGB")

    def local_path(self, ref: str) -> str:
        """A local file path for serving or attaching the version (downloaded if the store is remote)."""
        version = self.get(ref)
        path = self._blob_path(version.sha256)
        if self._local:
            return path
        cache = Path(tempfile.gettempdir()) / "atelier-cache"
        cache.mkdir(exist_ok=True)
        target = cache / f"{ref}.{version.format}"
        if not target.exists():
            target.write_bytes(self.fs.cat_file(path))
        return str(target)

    def history(self, session: str) -> list[ImageVersion]:
        """All versions of a session in creation order (the nodes of its tree)."""
        path = self._session_path(session)
        if not self.fs.exists(path):
            return []
        seen, out = set(), []
        for line in self.fs.cat_file(path).decode().splitlines():
            ref = json.loads(line)["ref"]
            if ref not in seen:
                seen.add(ref)
                out.append(self.get(ref))
        return out

    def children(self, ref: str, session: str | None = None) -> list[ImageVersion]:
        pool = self.history(session) if session else self.all_versions()
        return [v for v in pool if v.parent == ref]

    def lineage(self, ref: str) -> list[ImageVersion]:
        """The path from the root of the tree to `ref` (oldest first)."""
        chain = []
        seen = set()
        current: str | None = ref
        while current and current not in seen:
            seen.add(current)
            version = self.get(current)
            chain.append(version)
            current = version.parent
        return list(reversed(chain))

    def all_versions(self) -> list[ImageVersion]:
        out = []
        for path in self.fs.ls(self._join("versions"), detail=False):
            if path.endswith(".json"):
                out.append(ImageVersion.model_validate_json(self.fs.cat_file(path)))
        return sorted(out, key=lambda v: v.created_at)
