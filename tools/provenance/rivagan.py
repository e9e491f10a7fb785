"""Optional second watermark layer: RivaGAN (a learned watermark, 32 bits) from invisible-watermark.

It carries the first 32 bits of the image's 48-bit id. The ONNX encoder and decoder ship inside
the `invisible-watermark` wheel and run with onnxruntime; they are loaded on first use. RivaGAN is
much slower than dwtDctSvd on a CPU (a convolutional network over the whole frame), so it is off
by default (`provenance.watermark_rivagan`).
"""

from __future__ import annotations

import threading

import numpy as np
from PIL import Image

BITS = 32
_lock = threading.Lock()
_loaded = False


def _load():
    global _loaded
    from imwatermark import WatermarkEncoder

    with _lock:
        if not _loaded:
            WatermarkEncoder.loadModel()  # needs onnxruntime
            _loaded = True


def id_bits(wm_id: str) -> list[int]:
    value = int(wm_id, 16) >> 16  # the first 32 of the 48 bits
    return [(value >> (BITS - 1 - i)) & 1 for i in range(BITS)]


def embed(image: Image.Image, wm_id: str) -> Image.Image:
    from imwatermark import WatermarkEncoder

    _load()
    encoder = WatermarkEncoder()
    encoder.set_watermark("bits", id_bits(wm_id))
    bgr = np.ascontiguousarray(np.asarray(image.convert("RGB"))[:, :, ::-1])
    out = encoder.encode(bgr, "rivaGan")
    return Image.fromarray(np.ascontiguousarray(out[:, :, ::-1]), "RGB")


def read(image: Image.Image) -> list[int]:
    from imwatermark import WatermarkDecoder

    _load()
    decoder = WatermarkDecoder("bits", BITS)
    bgr = np.ascontiguousarray(np.asarray(image.convert("RGB"))[:, :, ::-1])
    return [int(b) for b in decoder.decode(bgr, "rivaGan")]

