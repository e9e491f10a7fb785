"""A remote image engine: any server of OpenAI's Images API (`engine.kind: openai-images`).

Another Atelier (`atelier serve`), vLLM-Omni or SGLang serving Qwen-Image: the way to put many
GPUs behind one Atelier. Generation is `POST {base_url}/images/generations`, editing
`POST {base_url}/images/edits` (multipart, the source first, references after it), both asking
for `b64_json`. Everything around the pixels stays in this process: the screens, the face checks
and retries, drift control, the watermark, the credentials, the audit log.

The request carries `size` as WIDTHxHEIGHT (the size this engine would draw at) and Atelier's
extension fields `seed` and `negative_prompt`; a server that ignores them still works, but then
results are not reproducible from the seed. The key comes from the environment variable
`engine.api_key_env` (default `ATELIER_ENGINE_API_KEY`), never from the profile file.
"""

from __future__ import annotations

import base64
import io
import os
from typing import Sequence

from PIL import Image, UnidentifiedImageError

from tools.engines.base import ImageEngine, Progress
from tools.errors import EngineError, ModelUnavailableError, RateLimitedError
from tools.settings import EngineSettings


class OpenAIImagesEngine(ImageEngine):
    def __init__(self, settings: EngineSettings, *, profile: str | None = None):
        if not settings.base_url:
            raise ModelUnavailableError(f"profile {profile or '?'}: engine.kind openai-images needs engine.base_url "
                                        "(e.g. http://gpu-1:8000/v1)")
        self.settings = settings
        self.profile = profile
        self._client = None

    def client(self):
        if self._client is None:
            try:
                import openai
            except ImportError:
                raise ModelUnavailableError("engine.kind openai-images needs the openai client: "
                                            "pip install 'qwen-atelier[remote]'") from None
            key = os.environ.get(self.settings.api_key_env) or "none"
            self._client = openai.OpenAI(base_url=self.settings.base_url, api_key=key, max_retries=1,
                                         timeout=self.settings.timeout_s)
        return self._client

    def _request(self, call, what: str):
        import openai

        where = self.settings.base_url
        try:
            return call()
        except openai.RateLimitError as err:
            raise RateLimitedError(f"the image server at {where} is busy (rate limited): {_message(err)}",
                                   retry_after=_retry_after(err)) from None
        except openai.APIStatusError as err:
            raise EngineError(f"the image server at {where} answered {err.status_code} to {what}: "
                              f"{_message(err)}") from None
        except openai.APITimeoutError:
            raise EngineError(f"the image server at {where} did not answer {what} within "
                              f"{self.settings.timeout_s:g} s") from None
        except openai.APIConnectionError:
            raise EngineError(f"the image server at {where} cannot be reached ({what})") from None

    def _images(self, response, what: str) -> list[Image.Image]:
        out = []
        for item in response.data or []:
            if not item.b64_json:
                raise EngineError(f"the image server at {self.settings.base_url} sent no b64_json image for {what}")
            try:
                image = Image.open(io.BytesIO(base64.b64decode(item.b64_json)))
                image.load()
            except (ValueError, UnidentifiedImageError, OSError):
                raise EngineError(f"the image server at {self.settings.base_url} sent an image that cannot be read "
                                  f"({what})") from None
            out.append(image.convert("RGB"))
        if not out:
            raise EngineError(f"the image server at {self.settings.base_url} sent no image for {what}")
        return out

    def generate(self, prompt: str, *, width: int, height: int, seed: int, steps: int | None = None,
                 negative_prompt: str | None = None, count: int = 1, progress: Progress | None = None,
                 few_step: bool = True) -> list[Image.Image]:
        extra = {"seed": seed, **({"negative_prompt": negative_prompt} if negative_prompt else {})}
        if progress:
            progress(0, 1)
        response = self._request(lambda: self.client().images.generate(
            model=self.settings.model, prompt=prompt, n=count, size=f"{width}x{height}",
            response_format="b64_json", extra_body=extra), "a generation")
        images = self._images(response, "a generation")
        if progress:
            progress(1, 1)
        return images[:count]

    def edit(self, instruction: str, images: Sequence[Image.Image], *, seed: int, steps: int | None = None,
             width: int | None = None, height: int | None = None, progress: Progress | None = None,
             negative_prompt: str | None = None, adapters: Sequence[str] = (), few_step: bool = True) -> Image.Image:
        files = []
        for i, image in enumerate(images):
            buf = io.BytesIO()
            image.convert("RGB").save(buf, format="PNG")
            files.append((f"image-{i + 1}.png", buf.getvalue(), "image/png"))
        extra = {"seed": seed}
        if progress:
            progress(0, 1)
        size = f"{width}x{height}" if width and height else "auto"
        response = self._request(lambda: self.client().images.edit(
            model=self.settings.model, image=files if len(files) > 1 else files[0], prompt=instruction, size=size,
            response_format="b64_json", extra_body=extra), "an edit")
        result = self._images(response, "an edit")[0]
        if progress:
            progress(1, 1)
        return result


def _message(err) -> str:
    body = getattr(err, "body", None)
    if isinstance(body, dict):
        inner = body.get("error", body)
        if isinstance(inner, dict) and inner.get("message"):
            return " ".join(str(inner["message"]).split())[:300]
    return " ".join(str(err).split())[:300]


def _retry_after(err) -> float:
    try:
        return float(err.response.headers.get("retry-after", 10))
    except (AttributeError, TypeError, ValueError):
        return 10.0
