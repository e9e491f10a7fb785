"""The image store: content-addressed versions with short refs and a history tree per session.

Layout under the root (a local path or any fsspec URL):

    blobs/ab/abcdef....png      the bytes of each version, named by their sha256
    versions/img_abcdef123456.json   one record per version (parent, tool call, size, metadata)
    sessions/<sha of session id>.jsonl   the refs of a session, in creation order
    staging/<id>.png (+ .json)  results of a tool that are not screened and sealed yet

Refs and filenames never become paths: a ref must match `img_<hex>` and session ids are hashed,
so nothing is ever written outside the root.

Ownership: every version belongs to the user who uploaded or made it (`owner`). A user's refs are
derived from the user and the content, so two users never share a version record (the bytes are
still stored once), and `ImageStore.scoped(user)` is the view every surface works through: it
resolves a ref only for its owner and answers another user's ref exactly like an unknown one.
Versions without an owner (tools used without the agent) belong to the local user.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import re
import stat
import tempfile
import threading
import time
import uuid
import warnings
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
LOCAL_USER = "local"  # the one person of the local modes (no keys, stdio MCP, the CLI)
READ_CHUNK = 1 << 20


def match_bomb_guard(limits: LimitSettings) -> None:
    """Make PIL's decompression-bomb guard refuse what `max_pixels` refuses, in every
    `Image.open` of the process (verify, put, open), not only uploads: PIL raises above twice
    `MAX_IMAGE_PIXELS`. Set at import from the default limits, then only ever raised for a
    larger `max_pixels` (a small test limit must not break other images; `decode_upload`'s header
    check enforces a smaller one exactly). PIL's warning band below its error is silenced: the
    explicit checks say what is wrong, in one line."""
    global _BOMB_GUARD_SET
    wanted = max(1, limits.max_pixels // 2)
    if Image.MAX_IMAGE_PIXELS is not None and (not _BOMB_GUARD_SET or wanted > Image.MAX_IMAGE_PIXELS):
        Image.MAX_IMAGE_PIXELS = wanted
        _BOMB_GUARD_SET = True


_BOMB_GUARD_SET = False
warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)
match_bomb_guard(LimitSettings())


class ImageVersion(BaseModel):
    """One stored image version (a node of the session's history tree)."""

    ref: str
    sha256: str
    owner: str | None = None  # the user who uploaded or made it (None: the local user)
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


def working_size(width: int, height: int, limits: LimitSettings) -> tuple[int, int]:
    """The size an image of `width` x `height` is processed at: itself when it is within
    `max_working_pixels` and `max_working_side`, else scaled down (aspect kept) to fit both."""
    scale = min(1.0, math.sqrt(limits.max_working_pixels / max(1, width * height)),
                limits.max_working_side / max(1, width, height))
    if scale >= 1.0:
        return width, height
    return max(8, math.floor(width * scale)), max(8, math.floor(height * scale))


def resize_note(version: ImageVersion) -> str | None:
    """One line for surfaces when an upload was stored at the working size (None otherwise)."""
    original = (version.metadata or {}).get("resized_from")
    if not original:
        return None
    name = version.filename or version.ref
    return (f"{name}: {original[0]}x{original[1]} is over the working size; "
            f"stored and edited at {version.width}x{version.height}")


UPLOAD_NAME = "the uploaded file"  # how errors name an upload whose own file name is not known


def upload_name(filename: str | os.PathLike | None) -> str:
    """How errors name an upload: the person's own file name (its last part), else `UPLOAD_NAME`."""
    name = Path(os.fspath(filename)).name if filename else ""
    return name or UPLOAD_NAME


def _pixels(count: int, *, up: bool = False) -> str:
    """A pixel count as a person reads it: "144 MP", "50.1 MP"; small counts in pixels. `up`
    rounds up, so an image over a limit never reads as equal to it."""
    if count < 100_000:
        return f"{count:,} pixels"
    tenths = math.ceil(count / 100_000) if up else round(count / 100_000)
    return f"{tenths / 10:g} MP"


def too_large_message(name: str, width: int, height: int, limits: LimitSettings) -> str:
    """Which hard limit an image of `width` x `height` is over, in one line: "photo.png:
    12000×12000 px = 144 MP; the limit is 50 MP", or its longest side against `max_side`."""
    size = f"{name}: {width}×{height} px"
    over_pixels, side = width * height > limits.max_pixels, max(width, height)
    if over_pixels and side > limits.max_side:
        return (f"{size} = {_pixels(width * height, up=True)} and its longest side is {side} px; "
                f"the limits are {_pixels(limits.max_pixels)} and {limits.max_side} px a side")
    if over_pixels:
        return f"{size} = {_pixels(width * height, up=True)}; the limit is {_pixels(limits.max_pixels)}"
    return f"{size}; its longest side is {side} px; the limit is {limits.max_side} px"


def _header_size(data: bytes) -> tuple[int, int] | None:
    """The width and height a PNG, JPEG or WebP header declares, read past PIL's bomb guard (the
    format plugins read the header only; `Image.open` refuses before its size can be seen)."""
    Image.init()
    for fmt in ALLOWED_FORMATS:
        factory, accept = Image.OPEN.get(fmt, (None, None))
        if factory is None or (accept is not None and not accept(data[:16])):
            continue
        try:
            with factory(io.BytesIO(data), None) as probe:
                return probe.size
        except Exception:  # noqa: BLE001 - then the line says less
            continue
    return None


def _bomb_message(name: str, data: bytes, err: Exception, limits: LimitSettings) -> str:
    """PIL's decompression-bomb refusal as the hard limit the image is over (with its size from
    the header, else the pixel count PIL gives: its WebP reader refuses inside the header read)."""
    size = _header_size(data)
    if size is not None:
        return too_large_message(name, *size, limits)
    found = re.search(r"\((\d+) pixels\)", str(err))
    count = f" is {_pixels(int(found.group(1)), up=True)}" if found else " has too many pixels"
    return f"{name}: the image{count}; the limit is {_pixels(limits.max_pixels)}"


def _decodes_as_is(data: bytes) -> bool:
    """Whether these bytes decode to the pixels `normalize_image` would store: 8-bit RGB, one
    frame, no EXIF rotation (then the file itself can be kept)."""
    with Image.open(io.BytesIO(data)) as im:
        orientation = im.getexif().get(0x0112, 1)
        return im.mode == "RGB" and getattr(im, "n_frames", 1) == 1 and orientation in (None, 1)


def decode_upload(data: bytes, limits: LimitSettings, *, name: str = UPLOAD_NAME, fit: bool = True) -> Image.Image:
    """Validate and decode uploaded bytes; raise BadImageError with one readable line.

    With `fit`, an image over the working budget (`max_working_pixels`, `max_working_side`) is
    decoded at the working size (a JPEG at a reduced DCT scale, then high-quality resampling) and
    `image.info["resized_from"]` holds its original (upright) size; the hard limits (`max_pixels`,
    `max_side`) still refuse."""
    match_bomb_guard(limits)
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
    except Image.DecompressionBombError as err:
        raise BadImageError(_bomb_message(name, data, err, limits)) from None
    except Exception as err:  # noqa: BLE001 - any decoder failure is a bad upload
        raise BadImageError(f"{name}: unreadable image ({err})") from None
    fmt = probe.format or "?"
    if fmt not in ALLOWED_FORMATS:
        raise BadImageError(f"{name}: {fmt} images are not supported; use PNG, JPEG or WebP")
    width, height = probe.size
    if width * height > limits.max_pixels or max(width, height) > limits.max_side:
        raise BadImageError(too_large_message(name, width, height, limits))
    if width < 8 or height < 8:
        raise BadImageError(f"{name}: {width}x{height} is too small (at least 8x8)")
    target = working_size(width, height, limits) if fit else (width, height)
    try:
        probe.verify()  # structure and checksums (PNG CRCs)
        image = Image.open(io.BytesIO(data))
        if target != (width, height) and fmt == "JPEG":
            image.draft(image.mode, target)  # decode at 1/2, 1/4 or 1/8 scale, still >= target
        image.load()  # full decode: truncated files fail here
    except Image.DecompressionBombError as err:
        raise BadImageError(_bomb_message(name, data, err, limits)) from None
    except Exception as err:  # noqa: BLE001
        reason = "the file is truncated or corrupt" if "truncat" in str(err).lower() else f"corrupt image ({err})"
        raise BadImageError(f"{name}: {reason}") from None
    if getattr(image, "n_frames", 1) > 1:
        image.seek(0)
    if target == (width, height):
        return normalize_image(image)
    swapped = image.getexif().get(0x0112) in (5, 6, 7, 8)  # EXIF orientation turns it a quarter
    upright = (height, width) if swapped else (width, height)
    if image.mode not in ("RGB", "RGBA", "L", "LA"):
        image = normalize_image(image)  # palette, 16-bit, CMYK...: to upright 8-bit RGB first
        target = target[::-1] if swapped else target
    image = normalize_image(image.resize(target, Image.LANCZOS, reducing_gap=3.0))
    image.info["resized_from"] = list(upright)
    return image


def _not_a_file(mode: int) -> str | None:
    """What a non-regular file is, in words (None for a regular file)."""
    for test, what in ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO (named pipe)"),
                       (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                       (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return what
    return None if stat.S_ISREG(mode) else "not a regular file"


def _over_limit(name: str, size: int, limits: LimitSettings) -> BadImageError:
    return BadImageError(
        f"{name}: {size / 1e6:.1f} MB is over the {limits.max_upload_bytes / 1e6:.0f} MB upload limit")


def read_upload_file(path: str | os.PathLike, limits: LimitSettings, *, name: str | None = None) -> bytes:
    """The bytes of a user-named image file, read within the upload budget: the one way a file on
    disk becomes an upload (store ingest, CLI commands, the chat app's uploads).

    Only a regular file is read (a directory, FIFO, device or socket is refused from its stat, at
    once), its size is checked before reading (a sparse 3 GB file costs nothing), it is opened
    non-blocking (a FIFO swapped in after the stat cannot hang) and at most `max_upload_bytes + 1`
    bytes are read (a file that grows meanwhile is still refused). Errors are `BadImageError`
    one-liners naming the file as `name` (default: the path as given)."""
    name = name or os.fspath(path)
    limit = limits.max_upload_bytes
    try:
        info = os.stat(path)  # follows a symlink: a link to /dev/zero is a character device
    except OSError as err:
        raise BadImageError(f"{name}: cannot read file ({err.strerror or err})") from None
    what = _not_a_file(info.st_mode)
    if what:
        raise BadImageError(f"{name}: is {what}, not an image file")
    if info.st_size > limit:
        raise _over_limit(name, info.st_size, limits)
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0) | getattr(os, "O_BINARY", 0)
    try:
        fd = os.open(path, flags)
    except OSError as err:
        raise BadImageError(f"{name}: cannot read file ({err.strerror or err})") from None
    try:
        info = os.fstat(fd)  # what was opened, which may not be what was stat'ed
        what = _not_a_file(info.st_mode)
        if what:
            raise BadImageError(f"{name}: is {what}, not an image file")
        if info.st_size > limit:
            raise _over_limit(name, info.st_size, limits)
        chunks, total = [], 0
        while total <= limit:
            try:
                chunk = os.read(fd, min(READ_CHUNK, limit + 1 - total))
            except BlockingIOError:
                raise BadImageError(f"{name}: the file would block; not an image file") from None
            except OSError as err:
                raise BadImageError(f"{name}: cannot read file ({err.strerror or err})") from None
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
    finally:
        os.close(fd)
    if total > limit:
        raise _over_limit(name, total, limits)
    return b"".join(chunks)


# zlib levels of the PNGs the store writes. PIL's default (6) spends 5x the time of level 1 on a
# photo for ~10% fewer bytes (8 MP: 6.0 s vs 1.1 s; level 3: 1.5 s, +10%); staged results are
# temporary, so they take the fastest level.
PNG_LEVEL = 3
STAGING_PNG_LEVEL = 1


def encode_png(image: Image.Image, level: int = PNG_LEVEL) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG", compress_level=level)
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
        self, data: bytes | os.PathLike | str, *, filename: str | None = None, session: str | None = None,
        owner: str | None = None,
    ) -> ImageVersion:
        """Validate an upload and store it as a root version (origin `upload`)."""
        if isinstance(data, (str, os.PathLike)):
            filename = filename or Path(data).name or os.fspath(data)
            data = read_upload_file(data, self.limits, name=upload_name(filename))
        name = upload_name(filename)
        image = decode_upload(data, self.limits, name=name)
        resized_from = image.info.get("resized_from")
        metadata: dict[str, Any] = {"resized_from": resized_from} if resized_from else {}
        from tools.provenance.credentials import declares_ai, has_credentials

        if declares_ai(data):  # the file says a model made it: its adjustments stay labelled AI-generated
            metadata["ai_generated"] = True
        stored: Image.Image | bytes = image
        known = self.fs.exists(self._version_path(self._ref_for(owner or LOCAL_USER, _sha(data))))
        if not resized_from and not known and has_credentials(data) and _decodes_as_is(data):
            # content credentials live in the file: keep its bytes, so an edit of it names the upload,
            # manifest and all, as its ingredient (re-encoding would drop them). A file that is one
            # of this owner's own versions is re-encoded as before: a new upload of this thread.
            stored = data
            metadata["credentials"] = True
        return self.put(stored, session=session, origin="upload", filename=Path(filename).name if filename else None,
                        owner=owner, metadata=metadata or None)

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
        owner: str | None = None,
    ) -> ImageVersion:
        """Store an image (PIL image, or already-encoded PNG/JPEG/WebP bytes kept verbatim,
        e.g. a sealed file with its C2PA manifest) as a new version of `owner` (None: the local
        user). The same bytes of the same owner are one version; another owner gets its own."""
        owner = owner or LOCAL_USER
        if parent is not None:
            self.scoped(owner).get(parent)  # must exist, and be the owner's
        if isinstance(image, Image.Image):
            data = encode_png(image)
            width, height, fmt = image.width, image.height, "png"
        else:
            data = bytes(image)
            with Image.open(io.BytesIO(data)) as probe:
                width, height = probe.size
                fmt = ALLOWED_FORMATS.get(probe.format or "", "png")
        sha = _sha(data)
        ref = self._ref_for(owner, sha)
        with self._lock:
            if self.fs.exists(self._version_path(ref)):
                existing = self.get(ref)
                if session and existing.session != session:
                    self._append_session(session, ref)
                return existing
            self._write_atomic(self._blob_path(sha), data)
            version = ImageVersion(
                ref=ref, sha256=sha, owner=owner, session=session, parent=parent, origin=origin, tool_call=tool_call,
                width=width, height=height, format=fmt, filename=filename, metadata=metadata or {},
            )
            self._write_atomic(self._version_path(ref), version.model_dump_json().encode())
            if session:
                self._append_session(session, ref)
        return version

    def _ref_for(self, owner: str, sha: str) -> str:
        """A version's ref: from its owner and its content, so users never share a record."""
        return "img_" + hashlib.sha256(f"{owner}\0{sha}".encode()).hexdigest()[: self.ref_length]

    def scoped(self, owner: str | None) -> OwnedImages:
        """The store as `owner` sees it (what every surface and turn works through)."""
        return OwnedImages(self, owner or LOCAL_USER)

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
        self._write_atomic(self._join("staging", f"{sid}.png"), encode_png(image, STAGING_PNG_LEVEL))
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


def owner_of(version: ImageVersion) -> str:
    return version.owner or LOCAL_USER


class OwnedImages:
    """One user's view of an `ImageStore`: the same reading and writing API, but a ref resolves
    only when the version is `owner`'s. Another user's ref gets the very error an unknown ref
    gets, so a ref is no existence oracle; a session's history lists only the owner's versions."""

    def __init__(self, store: ImageStore, owner: str):
        self.store = store
        self.owner = owner
        self.limits = store.limits

    def __repr__(self) -> str:
        return f"OwnedImages({self.store.url!r}, owner={self.owner!r})"

    def scoped(self, owner: str | None) -> OwnedImages:
        return self.store.scoped(owner)

    # reading
    def get(self, ref: str) -> ImageVersion:
        version = self.store.get(ref)
        if owner_of(version) != self.owner:
            raise UnknownRefError(f"no image {ref} in the store")
        return version

    def exists(self, ref: str) -> bool:
        try:
            self.get(ref)
        except UnknownRefError:
            return False
        return True

    def read_bytes(self, ref: str) -> bytes:
        self.get(ref)
        return self.store.read_bytes(ref)

    def open(self, ref: str) -> Image.Image:
        self.get(ref)
        return self.store.open(ref)

    def local_path(self, ref: str) -> str:
        self.get(ref)
        return self.store.local_path(ref)

    def history(self, session: str) -> list[ImageVersion]:
        return [v for v in self.store.history(session) if owner_of(v) == self.owner]

    def children(self, ref: str, session: str | None = None) -> list[ImageVersion]:
        self.get(ref)
        pool = self.history(session) if session else self.all_versions()
        return [v for v in pool if v.parent == ref]

    def lineage(self, ref: str) -> list[ImageVersion]:
        """The owner's path from the root of the tree to `ref` (oldest first)."""
        self.get(ref)
        return [v for v in self.store.lineage(ref) if owner_of(v) == self.owner]

    def all_versions(self) -> list[ImageVersion]:
        return [v for v in self.store.all_versions() if owner_of(v) == self.owner]

    # writing
    def ingest(self, data: bytes | os.PathLike | str, *, filename: str | None = None,
               session: str | None = None) -> ImageVersion:
        return self.store.ingest(data, filename=filename, session=session, owner=self.owner)

    def put(self, image: Image.Image | bytes, **kwargs: Any) -> ImageVersion:
        kwargs["owner"] = self.owner
        return self.store.put(image, **kwargs)

    # staging (results of this owner's tools, not yet screened and sealed)
    def stage(self, image: Image.Image, meta: dict[str, Any] | None = None) -> str:
        return self.store.stage(image, meta)

    def load_staged(self, sid: str) -> tuple[Image.Image, dict[str, Any]]:
        return self.store.load_staged(sid)

    def discard_staged(self, sid: str) -> None:
        self.store.discard_staged(sid)
