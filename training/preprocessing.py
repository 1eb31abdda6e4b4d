"""Image preprocessing: the one source of truth shared by training, evaluation, export and serving.

Pure NumPy + Pillow (no torch import), so the gateway and the Triton preprocess model can use it
without a training install.

Pipeline (every stage is a function here):
    decode_image(bytes) -> RGB uint8 HxWx3
    resize_canonical(img, cfg) -> RGB uint8 at the model's scoring size (``cfg.sizing``):
        'fixed'  shorter side ``cfg.short_side``, longer side capped, both multiples of 32 (model v1)
        'native' the decoded pixels as they are; only an image whose longer side exceeds
                 ``cfg.native_max_side`` is downscaled to it, and one whose shorter side is below
                 ``cfg.crop_size`` is upscaled to it (docs/SIZING.md says why and what it costs)
    eval_crops(img, cfg) -> uint8 N x crop x crop x 3 (deterministic multi-crop)
    random_crop(img, cfg, rng) -> uint8 crop x crop x 3 (training, with horizontal flip)

Normalisation (mean / std) is *not* done here: it lives inside the network (``IQAModel.normalize``)
and therefore inside the exported ONNX / TorchScript graphs, so every runtime feeds raw pixels.
The score of an image is the mean of the scores of its evaluation crops.
"""

from __future__ import annotations

import io
import json
import re
import struct
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

__all__ = [
    "SIZINGS",
    "ImageDecodeError",
    "ImageTooLargeError",
    "PreprocessConfig",
    "crop_origins",
    "decode_image",
    "eval_crops",
    "load_image_file",
    "preprocess_bytes",
    "random_crop",
    "resize_canonical",
]

# Backbone strides: sides that are multiples of this keep every stride-2 input even, which is what
# the static TF-"SAME" padding of the EfficientNet-Lite backbone was computed for.
SIDE_MULTIPLE = 32
# How an image is sized before its evaluation crops are cut (PreprocessConfig.sizing).
SIZINGS = ("fixed", "native")


# Pillow messages can embed object reprs ("<_io.BytesIO object at 0x7f...>"): internals, not for clients.
_OBJECT_REPR = re.compile(r"\s*<[^<>]* at 0x[0-9a-fA-F]+>")
# What Pillow's plugins raise on corrupt or fuzzed files besides OSError / ValueError.
_DECODER_FAILURES = (
    UnidentifiedImageError,
    OSError,
    SyntaxError,
    ValueError,
    EOFError,
    IndexError,
    KeyError,
    TypeError,
    ArithmeticError,
    RuntimeError,
    struct.error,
)


class ImageDecodeError(ValueError):
    """The bytes are not an image Pillow can decode (corrupt, truncated, or not an image)."""


class ImageTooLargeError(ValueError):
    """The decoded image exceeds the configured pixel budget (decompression-bomb guard)."""


@dataclass(frozen=True)
class PreprocessConfig:
    """Preprocessing and score-scale settings that travel with a model (checkpoint, metadata.json)."""

    sizing: str = "fixed"
    short_side: int = 288
    max_long_side: int = 512
    crop_size: int = 224
    num_eval_crops: int = 5
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    score_min: float = 0.0
    score_max: float = 100.0
    lower_is_better: bool = False
    native_max_side: int = 2048
    max_pixels: int = 50_000_000
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.crop_size % SIDE_MULTIPLE or self.short_side % SIDE_MULTIPLE:
            raise ValueError(f"crop_size and short_side must be multiples of {SIDE_MULTIPLE}")
        if self.crop_size > self.short_side:
            raise ValueError("crop_size must not exceed short_side")
        if self.max_long_side < self.short_side:
            raise ValueError("max_long_side must be >= short_side")
        if self.sizing not in SIZINGS:
            raise ValueError(f"sizing must be one of {SIZINGS}, got {self.sizing!r}")
        if self.native_max_side < self.crop_size:
            raise ValueError("native_max_side must be >= crop_size")
        if self.num_eval_crops not in (1, 5, 9):
            raise ValueError("num_eval_crops must be 1 (center), 5 (corners + center) or 9 (3x3 grid)")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["mean"], d["std"] = list(self.mean), list(self.std)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PreprocessConfig:
        d = dict(d)
        for key in ("mean", "std"):
            if key in d:
                d[key] = tuple(float(v) for v in d[key])
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in d.items() if k in known})

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)


def decode_image(data: bytes, max_pixels: int = PreprocessConfig.max_pixels) -> np.ndarray:
    """Decode encoded image bytes to RGB uint8 HxWx3, applying EXIF orientation.

    Alpha is composited on white (ad creatives are usually shown on white).
    Raises ImageDecodeError / ImageTooLargeError with a message fit for a client.
    """
    if not data:
        raise ImageDecodeError("empty image body")
    try:
        with Image.open(io.BytesIO(data)) as im:
            w, h = im.size
            if w * h > max_pixels:
                raise ImageTooLargeError(f"image has {w * h} pixels, more than the limit of {max_pixels}")
            im.load()
            im = ImageOps.exif_transpose(im)
            return _to_rgb_array(im)
    except (ImageTooLargeError, ImageDecodeError):
        raise
    except Image.DecompressionBombError as exc:
        raise ImageTooLargeError(_OBJECT_REPR.sub("", str(exc))) from exc
    except _DECODER_FAILURES as exc:
        detail = _OBJECT_REPR.sub("", str(exc)).strip() or type(exc).__name__
        raise ImageDecodeError(f"cannot decode image: {detail}") from exc


def load_image_file(path: str) -> np.ndarray:
    """Read an image file from disk as RGB uint8 HxWx3 (same decoder as the gateway)."""
    with open(path, "rb") as f:
        return decode_image(f.read())


def _to_rgb_array(im: Image.Image) -> np.ndarray:
    if im.mode in ("RGBA", "LA") or (im.mode == "P" and "transparency" in im.info):
        im = im.convert("RGBA")
        background = Image.new("RGBA", im.size, (255, 255, 255, 255))
        im = Image.alpha_composite(background, im)
    if im.mode != "RGB":
        im = im.convert("RGB")
    arr = np.asarray(im, dtype=np.uint8)
    if arr.ndim != 3 or arr.shape[2] != 3 or min(arr.shape[:2]) < 1:
        raise ImageDecodeError(f"unsupported image shape {arr.shape}")
    return arr


def canonical_size(height: int, width: int, cfg: PreprocessConfig) -> tuple[int, int]:
    """Target (height, width) at which an image of this size is scored (see ``cfg.sizing``)."""
    if cfg.sizing == "native":
        return _native_size(height, width, cfg)
    short, long_ = min(height, width), max(height, width)
    scale = cfg.short_side / short
    new_long = min(long_ * scale, cfg.max_long_side)
    new_long = max(cfg.short_side, round(new_long / SIDE_MULTIPLE) * SIDE_MULTIPLE)
    if height <= width:
        return cfg.short_side, new_long
    return new_long, cfg.short_side


def _native_size(height: int, width: int, cfg: PreprocessConfig) -> tuple[int, int]:
    """Native pixels: compression blocks, noise grain and pixelation keep the scale they were made at.
    Longer side capped at ``native_max_side`` (bounds decode-to-crop cost), shorter side at least one
    crop (an image smaller than a crop is upscaled, the only case where pixels are invented)."""
    short, long_ = min(height, width), max(height, width)
    scale = 1.0
    if long_ > cfg.native_max_side:
        scale = cfg.native_max_side / long_
    if short * scale < cfg.crop_size:
        scale = cfg.crop_size / short
    if scale == 1.0:
        return height, width
    return max(cfg.crop_size, round(height * scale)), max(cfg.crop_size, round(width * scale))


def resize_canonical(img: np.ndarray, cfg: PreprocessConfig) -> np.ndarray:
    """Resize RGB uint8 HxWx3 to the size it is scored at (antialiased bicubic, Pillow); a no-op when
    it already has that size (always, for a 'native' image within the bounds)."""
    th, tw = canonical_size(img.shape[0], img.shape[1], cfg)
    if (img.shape[0], img.shape[1]) == (th, tw):
        return np.ascontiguousarray(img)
    im = Image.fromarray(img).resize((tw, th), Image.Resampling.BICUBIC, reducing_gap=None)
    return np.asarray(im, dtype=np.uint8)


def _crop_origins(height: int, width: int, crop: int, n: int) -> list[tuple[int, int]]:
    cy, cx = (height - crop) // 2, (width - crop) // 2
    if n == 1:
        return [(cy, cx)]
    ys, xs = [0, height - crop], [0, width - crop]
    if n == 5:
        return [(ys[0], xs[0]), (ys[0], xs[1]), (ys[1], xs[0]), (ys[1], xs[1]), (cy, cx)]
    grid_y = [0, cy, height - crop]
    grid_x = [0, cx, width - crop]
    return [(y, x) for y in grid_y for x in grid_x]


def crop_origins(height: int, width: int, cfg: PreprocessConfig) -> list[tuple[int, int]]:
    """Top-left (y, x) of every evaluation crop of a canonical height x width image, in the order of
    ``eval_crops`` (for code that crops tensors, e.g. the gate's differentiable crop scorer)."""
    return _crop_origins(height, width, cfg.crop_size, cfg.num_eval_crops)


def eval_crops(img: np.ndarray, cfg: PreprocessConfig) -> np.ndarray:
    """Deterministic evaluation crops of a canonical image: uint8 N x crop x crop x 3."""
    h, w = img.shape[:2]
    c = cfg.crop_size
    if h < c or w < c:
        raise ValueError(f"image {h}x{w} is smaller than the crop {c}; call resize_canonical first")
    crops = [img[y : y + c, x : x + c] for y, x in _crop_origins(h, w, c, cfg.num_eval_crops)]
    return np.ascontiguousarray(np.stack(crops, axis=0))


def random_crop(
    img: np.ndarray, cfg: PreprocessConfig, rng: np.random.Generator, flip: bool = True
) -> np.ndarray:
    """Training augmentation: a random crop of a canonical image, flipped horizontally with p=0.5."""
    h, w = img.shape[:2]
    c = cfg.crop_size
    y = int(rng.integers(0, h - c + 1))
    x = int(rng.integers(0, w - c + 1))
    out = img[y : y + c, x : x + c]
    if flip and rng.random() < 0.5:
        out = out[:, ::-1]
    return np.ascontiguousarray(out)


def preprocess_bytes(data: bytes, cfg: PreprocessConfig) -> np.ndarray:
    """decode -> canonical resize -> eval crops: what the gateway and the Triton preprocess step run."""
    return eval_crops(resize_canonical(decode_image(data, cfg.max_pixels), cfg), cfg)
