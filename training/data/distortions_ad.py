"""Damage that ad images carry beyond KADID-10k's 25 types: WebP, resolution loss, exposure, contrast.

Registered into ``training.data.distortions.DISTORTIONS`` like the KADID types (importing
``training.data.distortions`` imports this module). Each borrows the KADID type whose human scores
are the closest stand-in for its pseudo-MOS anchor (``training.data.pseudo_mos``):

| name | anchor (KADID type) | parameter, levels 1..5 |
|---|---|---|
| ``webp`` | 09 JPEG2000 (a transform codec that smears) | WebP quality 40, 25, 15, 8, 2 |
| ``downscale_upscale`` | 01 gaussian blur | bicubic down by 1.5, 2, 3, 4, 6, then back up |
| ``overexpose`` | 16 brighten | linear gain 1.3, 1.6, 2.0, 2.6, 3.4, clipped (blown highlights) |
| ``underexpose`` | 17 darken | linear gain 0.75, 0.55, 0.4, 0.25, 0.14 (crushed, 8-bit) |
| ``contrast_loss`` | 25 contrast change | contrast around the mean × 0.8, 0.65, 0.5, 0.35, 0.2 |

Resolution loss is in pixels of the image as it is scored (the factor does not scale with the
image), which is what a served image carries.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from training.data.distortions import _encode_decode, _register, _to_uint8

__all__: list[str] = []


@_register("webp", kadid_type=9, params=(40, 25, 15, 8, 2), is_kadid=False)
def _webp(x: np.ndarray, quality: float, rng: np.random.Generator) -> np.ndarray:
    return _encode_decode(x, "WEBP", quality=int(quality), method=4)


@_register("downscale_upscale", kadid_type=1, params=(1.5, 2.0, 3.0, 4.0, 6.0), is_kadid=False)
def _downscale_upscale(x: np.ndarray, factor: float, rng: np.random.Generator) -> np.ndarray:
    h, w = x.shape[:2]
    small = (max(1, round(w / factor)), max(1, round(h / factor)))
    im = Image.fromarray(_to_uint8(x)).resize(small, Image.Resampling.BICUBIC, reducing_gap=None)
    return np.asarray(im.resize((w, h), Image.Resampling.BICUBIC), dtype=np.float32) / 255.0


@_register("overexpose", kadid_type=16, params=(1.3, 1.6, 2.0, 2.6, 3.4), is_kadid=False)
def _overexpose(x: np.ndarray, gain: float, rng: np.random.Generator) -> np.ndarray:
    return np.clip(x * gain, 0.0, 1.0)


@_register("underexpose", kadid_type=17, params=(0.75, 0.55, 0.4, 0.25, 0.14), is_kadid=False)
def _underexpose(x: np.ndarray, gain: float, rng: np.random.Generator) -> np.ndarray:
    return np.round(x * gain * 255.0) / 255.0


@_register("contrast_loss", kadid_type=25, params=(0.8, 0.65, 0.5, 0.35, 0.2), is_kadid=False)
def _contrast_loss(x: np.ndarray, factor: float, rng: np.random.Generator) -> np.ndarray:
    mean = x.mean(axis=(0, 1), keepdims=True)
    return mean + (x - mean) * factor
