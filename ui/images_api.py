"""OpenAI's Images API, served: `POST /v1/images/generations` and `POST /v1/images/edits`.

So that Open WebUI's *Images* settings, or any client of OpenAI's Images API (`openai`'s
`images.generate` / `images.edit`), use Atelier as their image engine. Each request is a tool call
through a session of its own (`Session.call_tool`), so it gets everything a chat turn gets: the
prompt and upload screens, the rate limit, the identity check of edits, the watermark and content
credentials, the audit log. What the API cannot do is said in one line, never silently dropped:

- `size` picks the contract's aspect ratio nearest to it (`1536x1024` -> 3:2; `auto`: 1:1, or the
  source's for edits); the engine draws at its own native size for that ratio.
- `n` (1-4): `count` for a generation; n edits of the same source for an edit.
- `response_format`: `b64_json` (the default) or `url` (a link to `GET /v1/files/{ref}`, signed
  when the server has keys). `output_format` other than png is a 400: the PNG carries the
  credentials.
- `mask` is a 400: edits are steered by words (the prompt), and everything outside what the
  prompt changes is pasted back from the source anyway.
- An edit that would change a real person's face needs their consent, which this API cannot ask
  for: the edit is not made and the answer is a 400 with code `consent_required`.
- A refused prompt or image is a 400 with code `content_policy_violation` and the reason.
- Atelier's extension fields are accepted: `seed`, `negative_prompt` (generations). Each response
  has an `atelier` object with the refs, sizes and checks of what was made.
"""

from __future__ import annotations

import asyncio
import base64
import time
import uuid
from pathlib import Path
from typing import Any, Literal

from fastapi import FastAPI, Request
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.datastructures import UploadFile

from tools.errors import AtelierError
from tools.schemas import ASPECT_RATIOS, describe_validation_error
from ui.http_api import ApiError, api_error_from, failed_turn  # (http_api adds these routes in create_app)

MAX_N = 4


class _ImagesRequest(BaseModel):
    """What both Images API requests carry (an edit's images come as files or data URLs beside it)."""

    model_config = ConfigDict(extra="allow")  # quality, style, background, moderation... accepted, ignored

    prompt: str = Field(min_length=1)
    model: str | None = None
    n: int = Field(default=1, ge=1, le=MAX_N)
    size: str | None = None
    response_format: Literal["b64_json", "url"] | None = None
    output_format: str | None = None
    user: str | None = None
    stream: bool | None = None


class ImageGenerationRequest(_ImagesRequest):
    seed: int | None = Field(default=None, ge=0, le=2**63 - 1)  # Atelier's extension
    negative_prompt: str | None = None  # Atelier's extension


class ImageEditRequest(_ImagesRequest):
    """The fields of an edit other than its images (multipart form fields or a JSON body)."""


def aspect_ratio_for(size: str | None, source: tuple[int, int] | None = None) -> str | None:
    """The contract's aspect ratio nearest to an Images API `size` ("1536x1024"), None for `auto`
    (or no size) with no source; raises ValueError for a size that is not WIDTHxHEIGHT."""
    if size is None or size == "auto":
        if source is None:
            return None
        width, height = source
    else:
        w, sep, h = size.lower().partition("x")
        if not sep or not (w.isdigit() and h.isdigit()) or int(w) <= 0 or int(h) <= 0:
            raise ValueError(f"size must be WIDTHxHEIGHT (like 1024x1024) or auto (got {size!r})")
        width, height = int(w), int(h)
    ratio = width / height

    def distance(ar: str) -> float:
        a, b = ar.split(":")
        return abs((float(a) / float(b)) / ratio - 1) + abs(ratio / (float(a) / float(b)) - 1)

    return min(ASPECT_RATIOS, key=distance)


def _bad(message: str, *, param: str | None = None, code: str | None = None):
    return ApiError(400, message, param=param, code=code)


def _check_request(adapter, body) -> None:
    if body.model is not None and body.model not in (adapter.model_id, adapter.atelier.profile.name):
            raise ApiError(404, f"model {body.model!r} does not exist; this server serves {adapter.model_id!r}",
                       type="not_found_error", code="model_not_found", param="model")
    if body.stream:
        raise _bad("stream is not supported for images here; ask without it", param="stream")
    if body.output_format not in (None, "png"):
        raise _bad(f"output_format {body.output_format!r} is not available: Atelier answers PNG, which carries the "
                   "image's content credentials", param="output_format")


def _outcome(result, what: str) -> None:
    """Raise the API error of a tool call that made nothing."""
    failed = failed_turn(result)
    if failed is not None:
        raise failed
    if result.refused is not None:
        raise ApiError(400, f"{what} refused ({result.refused.category or 'policy'}): {result.refused.reason}",
                       code="content_policy_violation", param="prompt")
    if result.consent is not None:
        question = result.consent.question or "this edit changes a real person's face"
        raise ApiError(400, f"{question} The Images API cannot ask for consent, so the edit was not made; make it in "
                       "the Atelier chat instead.", code="consent_required", param="prompt")
    if result.error is not None:
        raise ApiError(400, result.error.message or f"{what} failed", code=result.error.code or "tool_error")
    if not result.images:
        raise ApiError(500, f"{what} made no image", type="server_error", code="no_image")


class ImagesEndpoint:
    """The two routes, over the chat adapter's users, sessions and links."""

    def __init__(self, adapter):
        self.adapter = adapter

    def _session(self, request: Request):
        user = self.adapter.user_for(request)
        # one thread per request: Images API calls are independent, and concurrent ones never wait
        # on each other's thread lock (the rate limit still counts per user)
        thread = f"images-{uuid.uuid4().hex[:20]}"
        # not the chat adapter's session cache: one-off threads would push chats' sessions out of it
        session = self.adapter.atelier.session(thread, user_id=user, rate_key=self.adapter.rate_key_for(request))
        return session, user

    async def _call(self, session, name: str, args: dict[str, Any]):
        try:
            result = await asyncio.to_thread(session.call_tool, name, args)
        except AtelierError as err:
            raise api_error_from(err) from None
        if result.consent is not None:  # nothing may stay pending on a thread nobody will answer
            await asyncio.to_thread(session.resume, False)
        return result

    async def _response(self, results, fmt: str | None, request: Request, user: str) -> dict[str, Any]:
        data, made = [], []
        base = str(request.base_url)
        for result in results:
            for image in result.images:
                if fmt == "url":
                    data.append({"url": self.adapter.file_url(image.ref, base, user)})
                else:
                    raw = await asyncio.to_thread(Path(image.path).read_bytes)
                    data.append({"b64_json": base64.b64encode(raw).decode()})
                made.append({"ref": image.ref, "width": image.width, "height": image.height})
        checks = [r.tool_calls[-1].result.model_dump(mode="json") for r in results if r.tool_calls]
        return {"created": int(time.time()), "data": data, "output_format": "png",
                "atelier": {"images": made, "results": checks}}

    async def generations(self, body: ImageGenerationRequest, request: Request) -> dict[str, Any]:
        _check_request(self.adapter, body)
        try:
            ratio = aspect_ratio_for(body.size)
        except ValueError as err:
            raise _bad(str(err), param="size") from None
        args: dict[str, Any] = {"prompt": body.prompt, "count": body.n}
        if ratio is not None:
            args["aspect_ratio"] = ratio
        if body.seed is not None:
            args["seed"] = body.seed
        if body.negative_prompt:
            args["negative_prompt"] = body.negative_prompt
        session, user = self._session(request)
        result = await self._call(session, "generate_image", args)
        _outcome(result, "generate_image")
        return await self._response([result], body.response_format, request, user)

    async def edits(self, request: Request) -> dict[str, Any]:
        fields, images, mask = await self._edit_input(request)
        try:
            body = ImageEditRequest.model_validate(fields)
        except ValidationError as err:
            raise _bad(describe_validation_error(err, ImageEditRequest)) from None
        _check_request(self.adapter, body)
        if mask is not None:
            raise _bad("mask is not supported: describe what to change in the prompt (Atelier keeps everything else "
                       "as it was)", param="mask")
        if not images:
            raise _bad("an edit needs at least one image (image, or image[] for several)", param="image")
        limit = self.adapter.atelier.profile.limits.max_images_per_turn
        if len(images) > limit:
            raise _bad(f"{len(images)} images in one edit; the limit is {limit}", param="image", code="too_many_images")
        try:  # every argument is checked before anything is stored
            ratio = aspect_ratio_for(body.size) if body.size not in (None, "auto") else None
        except ValueError as err:
            raise _bad(str(err), param="size") from None
        session, user = self._session(request)
        refs = []
        for data, filename in images:
            try:
                version = await asyncio.to_thread(lambda d=data, f=filename: session.upload(d, filename=f))
            except AtelierError as err:
                    raise api_error_from(err) from None
            refs.append(version.ref)
        args: dict[str, Any] = {"image": refs[0], "instruction": body.prompt}
        if refs[1:]:
            args["references"] = refs[1:]
        results = []
        for _ in range(body.n):  # n edits of the same source: each a branch of it
            result = await self._call(session, "edit_image", args)
            _outcome(result, "edit_image")
            results.append(result)
        if ratio is not None:
            results = [await self._reframed(session, r, ratio) for r in results]
        return await self._response(results, body.response_format, request, user)

    async def _reframed(self, session, result, ratio: str):
        """An edit asked at another aspect ratio: the edited image, reframed to it."""
        image = result.images[0]
        if image.width and image.height and aspect_ratio_for(f"{image.width}x{image.height}") == ratio:
            return result
        framed = await self._call(session, "reframe_image", {"image": image.ref, "aspect_ratio": ratio})
        _outcome(framed, "reframe_image")
        return framed

    async def _edit_input(self, request: Request):
        """(fields, [(bytes, filename)], mask) from a multipart form or a JSON body."""
        kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if kind == "multipart/form-data":
            form = await request.form(max_files=64, max_fields=64)
            fields: dict[str, Any] = {}
            images: list[tuple[bytes, str | None]] = []
            mask = None
            for key, value in form.multi_items():
                if isinstance(value, UploadFile):
                    data = await value.read()
                    if key in ("image", "image[]", "images", "images[]"):
                        images.append((data, value.filename))
                    elif key == "mask":
                        mask = data
                    else:
                        raise _bad(f"unexpected file field {key!r} (use image, image[] or mask)", param=key)
                elif key in ("image", "image[]", "images", "images[]"):
                    images.append((await self.adapter.image_bytes(value, index=len(images) + 1), None))
                else:
                    fields[key] = value
            return fields, images, mask
        if kind in ("application/json", ""):
            try:
                raw = await request.json()
            except ValueError:
                raise _bad("the body is neither a multipart form nor valid JSON") from None
            if not isinstance(raw, dict):
                raise _bad("the JSON body must be an object")
            raw = dict(raw)
            given = raw.pop("images", None)
            if given is None:
                given = raw.pop("image", None)
            if isinstance(given, (str, dict)):
                given = [given]
            if given is not None and not isinstance(given, list):
                raise _bad("images must be a data URL, {\"image_url\": \"data:...\"}, or a list of them", param="images")
            images = []
            for item in given or []:
                url = item.get("image_url") if isinstance(item, dict) else item
                if isinstance(url, dict):
                    url = url.get("url")
                if not isinstance(url, str):
                    raise _bad("each image must be a data URL, or {\"image_url\": \"data:...\"}", param="images")
                images.append((await self.adapter.image_bytes(url, index=len(images) + 1), None))
            mask = raw.pop("mask", None)
            return raw, images, mask
        raise _bad(f"content type {kind!r} is not supported for edits (use multipart/form-data or application/json)")



def add_images_routes(app: FastAPI, adapter) -> None:
    endpoint = ImagesEndpoint(adapter)

    @app.post("/v1/images/generations")
    async def images_generations(body: ImageGenerationRequest, request: Request):
        return await endpoint.generations(body, request)

    @app.post("/v1/images/edits")
    async def images_edits(request: Request):
        return await endpoint.edits(request)
