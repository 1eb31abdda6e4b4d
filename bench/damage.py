"""The held-out ranking check's damage: what ad images carry, each at 5 levels, as encoded bytes.

Written for this check with Pillow and NumPy, separately from the training distortions
(training/data/distortions*.py): other code, other parameters, other filters, so that the check
measures the kind of damage and not one implementation of it. Level 0 is the clean image; levels
1..5 grow in severity. ``render(kind, img, level)`` returns the bytes a client would send: the JPEG
or WebP file itself for the codecs, a PNG for everything else.

| kind | levels 1..5 |
|---|---|
| jpeg | quality 60, 35, 20, 10, 5 |
| webp | quality 50, 30, 15, 8, 3 |
| gaussian_blur | Pillow GaussianBlur radius 0.8, 1.5, 2.5, 4, 6 px |
| motion_blur | horizontal box, 5, 9, 15, 21, 31 px |
| gaussian_noise | σ 4, 8, 14, 22, 32 (8-bit levels) |
| pixelation | blocks of 2, 3, 4, 6, 8 px |
| downscale_upscale | bilinear down by 1.5, 2, 3, 4, 6 and back up |
| contrast_loss | Pillow Contrast factor 0.75, 0.55, 0.4, 0.28, 0.18 |
| overexposure | Pillow Brightness factor 1.3, 1.6, 1.9, 2.3, 2.8 |
| underexposure | Pillow Brightness factor 0.7, 0.5, 0.35, 0.25, 0.15 |
| posterize | Pillow posterize to 6, 5, 4, 3, 2 bits (banding, flat-colour ads) |
"""

from __future__ import annotations

import io
from collections.abc import Callable

import numpy as np
from PIL import Image, ImageEnhance, ImageFilter, ImageOps

__all__ = ["KINDS", "LEVELS", "render"]

LEVELS = 5
_PARAMS: dict[str, tuple[float, ...]] = {
    "jpeg": (60, 35, 20, 10, 5),
    "webp": (50, 30, 15, 8, 3),
    "gaussian_blur": (0.8, 1.5, 2.5, 4.0, 6.0),
    "motion_blur": (5, 9, 15, 21, 31),
    "gaussian_noise": (4, 8, 14, 22, 32),
    "pixelation": (2, 3, 4, 6, 8),
    "downscale_upscale": (1.5, 2.0, 3.0, 4.0, 6.0),
    "contrast_loss": (0.75, 0.55, 0.4, 0.28, 0.18),
    "overexposure": (1.3, 1.6, 1.9, 2.3, 2.8),
    "underexposure": (0.7, 0.5, 0.35, 0.25, 0.15),
    "posterize": (6, 5, 4, 3, 2),
}
KINDS = tuple(_PARAMS)


def _png(im: Image.Image) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def _encoded(fmt: str) -> Callable[[Image.Image, float, int], bytes]:
    def encode(im: Image.Image, quality: float, seed: int) -> bytes:
        buf = io.BytesIO()
        im.save(buf, format=fmt, quality=int(quality))
        return buf.getvalue()

    return encode


def _gaussian_blur(im: Image.Image, radius: float, seed: int) -> bytes:
    return _png(im.filter(ImageFilter.GaussianBlur(radius)))


def _motion_blur(im: Image.Image, length: float, seed: int) -> bytes:
    x = np.asarray(im, dtype=np.float32)
    n = int(length)
    pad = np.pad(x, ((0, 0), (n // 2, n - 1 - n // 2), (0, 0)), mode="edge")
    c = np.cumsum(np.pad(pad, ((0, 0), (1, 0), (0, 0))), axis=1)
    out = (c[:, n:] - c[:, :-n]) / n
    return _png(Image.fromarray(np.clip(np.rint(out), 0, 255).astype(np.uint8)))


def _gaussian_noise(im: Image.Image, sigma: float, seed: int) -> bytes:
    x = np.asarray(im, dtype=np.float32)
    noisy = x + np.random.default_rng(seed).normal(0.0, sigma, x.shape)
    return _png(Image.fromarray(np.clip(np.rint(noisy), 0, 255).astype(np.uint8)))


def _pixelation(im: Image.Image, block: float, seed: int) -> bytes:
    w, h = im.size
    small = im.resize((max(1, round(w / block)), max(1, round(h / block))), Image.Resampling.BOX)
    return _png(small.resize((w, h), Image.Resampling.NEAREST))


def _downscale_upscale(im: Image.Image, factor: float, seed: int) -> bytes:
    w, h = im.size
    small = im.resize((max(1, round(w / factor)), max(1, round(h / factor))), Image.Resampling.BILINEAR)
    return _png(small.resize((w, h), Image.Resampling.BILINEAR))


def _enhance(cls: type) -> Callable[[Image.Image, float, int], bytes]:
    def apply(im: Image.Image, factor: float, seed: int) -> bytes:
        return _png(cls(im).enhance(factor))

    return apply


def _posterize(im: Image.Image, bits: float, seed: int) -> bytes:
    return _png(ImageOps.posterize(im, int(bits)))


_RENDER: dict[str, Callable[[Image.Image, float, int], bytes]] = {
    "jpeg": _encoded("JPEG"),
    "webp": _encoded("WEBP"),
    "gaussian_blur": _gaussian_blur,
    "motion_blur": _motion_blur,
    "gaussian_noise": _gaussian_noise,
    "pixelation": _pixelation,
    "downscale_upscale": _downscale_upscale,
    "contrast_loss": _enhance(ImageEnhance.Contrast),
    "overexposure": _enhance(ImageEnhance.Brightness),
    "underexposure": _enhance(ImageEnhance.Brightness),
    "posterize": _posterize,
}


def render(kind: str, img: np.ndarray, level: int, seed: int = 0) -> bytes:
    """Encoded bytes of ``img`` (RGB uint8) with ``kind`` at ``level`` (0 = clean, lossless PNG)."""
    if kind not in _RENDER:
        raise KeyError(f"unknown damage kind {kind!r}; kinds: {', '.join(KINDS)}")
    if not 0 <= level <= LEVELS:
        raise ValueError(f"level must be in 0..{LEVELS}")
    im = Image.fromarray(img)
    if level == 0:
        return _png(im)
    return _RENDER[kind](im, _PARAMS[kind][level - 1], seed)
