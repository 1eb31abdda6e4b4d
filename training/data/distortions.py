"""Synthetic distortions in the style of KADID-10k: 25 types x 5 levels, NumPy / SciPy / Pillow only.

Every distortion is registered under a short name with the number of its KADID-10k counterpart, so
that ``training.data.pseudo_mos`` can anchor its label on KADID's human scores for that type and
level. The parameters approximate the *kind* and the *range* of KADID's distortions; they are our
own choices, not a re-implementation of the KADID MATLAB code (see docs/DATASET.md).

Conventions shared by every entry:

* input and output are RGB uint8 HxWx3 arrays of the same shape;
* ``level`` runs from 1 (mildest) to 5 (strongest) and severity grows monotonically with it;
* all randomness (noise, angles, patch positions, signs) comes from the ``rng`` argument, so a
  distortion is a deterministic function of (image, level, rng seed);
* spatial parameters (blur radii, shifts, patch sizes) are given for KADID's 512x384 images and
  scaled by ``min(H, W) / 384``, so the small CI images get proportionally the same distortion.

Usage::

    from training.data.distortions import DISTORTIONS, apply_distortion
    out = apply_distortion("jpeg", img, level=3, rng=np.random.default_rng(0))
"""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from PIL import Image, features
from scipy import ndimage, signal

__all__ = [
    "DISTORTIONS",
    "KADID_TYPES",
    "NUM_LEVELS",
    "Distortion",
    "apply_distortion",
    "jpeg2000_codec",
    "list_distortions",
]

NUM_LEVELS = 5
_KADID_SHORT_SIDE = 384.0

# KADID-10k's 25 distortion types, by the number used in its file names (I01_<type>_<level>.png).
KADID_TYPES: dict[int, str] = {
    1: "gaussian blur",
    2: "lens blur",
    3: "motion blur",
    4: "color diffusion",
    5: "color shift",
    6: "color quantization",
    7: "color saturation 1",
    8: "color saturation 2",
    9: "JPEG2000",
    10: "JPEG",
    11: "white noise",
    12: "white noise in color component",
    13: "impulse noise",
    14: "multiplicative noise",
    15: "denoise",
    16: "brighten",
    17: "darken",
    18: "mean shift",
    19: "jitter",
    20: "non-eccentricity patch",
    21: "pixelate",
    22: "quantization",
    23: "color block",
    24: "high sharpen",
    25: "contrast change",
}

FloatFn = Callable[[np.ndarray, float, np.random.Generator], np.ndarray]


@dataclass(frozen=True)
class Distortion:
    """One registered distortion: ``fn`` maps a float32 RGB image in [0, 1] and one parameter value
    (``params[level - 1]``) to a float image; calling the object works on uint8 images."""

    name: str
    kadid_type: int
    params: tuple[float, ...]
    fn: FloatFn
    is_kadid: bool = True  # False: not a KADID-10k type, only borrows that type's anchors

    @property
    def kadid_name(self) -> str:
        return KADID_TYPES[self.kadid_type]

    def __call__(self, img: np.ndarray, level: int, rng: np.random.Generator) -> np.ndarray:
        if img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3:
            raise ValueError(f"expected an RGB uint8 HxWx3 image, got {img.dtype} {img.shape}")
        if not 1 <= level <= NUM_LEVELS:
            raise ValueError(f"level must be in 1..{NUM_LEVELS}, got {level}")
        out = self.fn(img.astype(np.float32) / 255.0, self.params[level - 1], rng)
        return _to_uint8(out)


DISTORTIONS: dict[str, Distortion] = {}


def _register(
    name: str, kadid_type: int, params: tuple[float, ...], is_kadid: bool = True
) -> Callable[[FloatFn], FloatFn]:
    def decorator(fn: FloatFn) -> FloatFn:
        if name in DISTORTIONS:
            raise ValueError(f"distortion {name!r} is already registered")
        if kadid_type not in KADID_TYPES:
            raise ValueError(f"unknown KADID-10k type {kadid_type}")
        if len(params) != NUM_LEVELS:
            raise ValueError(f"distortion {name!r} needs {NUM_LEVELS} parameters, got {len(params)}")
        DISTORTIONS[name] = Distortion(name, kadid_type, params, fn, is_kadid)
        return fn

    return decorator


def list_distortions() -> list[str]:
    """Registered names, ordered by their KADID-10k type number."""
    return sorted(DISTORTIONS, key=lambda n: (DISTORTIONS[n].kadid_type, n))


def apply_distortion(name: str, img: np.ndarray, level: int, rng: np.random.Generator) -> np.ndarray:
    if name not in DISTORTIONS:
        raise KeyError(f"unknown distortion {name!r}; available: {', '.join(list_distortions())}")
    return DISTORTIONS[name](img, level, rng)


def jpeg2000_codec() -> str:
    """'jpeg2000' when Pillow was built with OpenJPEG, else 'webp' (the stand-in codec)."""
    return "jpeg2000" if features.check("jpg_2000") else "webp"


# ----------------------------------------------------------------------------------------- helpers


def _to_uint8(x: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(x * 255.0), 0, 255).astype(np.uint8)


def _scale(x: np.ndarray) -> float:
    """Spatial scale of this image relative to KADID-10k's 512x384 images."""
    return min(x.shape[0], x.shape[1]) / _KADID_SHORT_SIDE


# Full-range BT.601 YCbCr (JPEG's), on floats so no rounding happens in between.
_RGB2YCC = np.array(
    [[0.299, 0.587, 0.114], [-0.168736, -0.331264, 0.5], [0.5, -0.418688, -0.081312]], np.float32
)
_YCC2RGB = np.linalg.inv(_RGB2YCC).astype(np.float32)


def _rgb_to_ycc(x: np.ndarray) -> np.ndarray:
    return x @ _RGB2YCC.T


def _ycc_to_rgb(y: np.ndarray) -> np.ndarray:
    return y @ _YCC2RGB.T


def _filter_channels(x: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """2-D convolution of every channel with ``kernel`` (FFT, reflected borders)."""
    ph, pw = kernel.shape[0] // 2, kernel.shape[1] // 2
    padded = np.pad(x, ((ph, ph), (pw, pw), (0, 0)), mode="reflect")
    out = signal.fftconvolve(padded, kernel[:, :, None], mode="valid", axes=(0, 1))
    return out.astype(np.float32)


def _disk_kernel(radius: float) -> np.ndarray:
    r = max(radius, 0.5)
    n = int(np.ceil(r))
    yy, xx = np.mgrid[-n : n + 1, -n : n + 1]
    # Anti-aliased disk: coverage falls off linearly across the one-pixel rim.
    k = np.clip(r + 0.5 - np.hypot(yy, xx), 0.0, 1.0)
    return (k / k.sum()).astype(np.float32)


def _line_kernel(length: float, angle: float) -> np.ndarray:
    half = max(length, 1.0) / 2.0
    n = int(np.ceil(half))
    k = np.zeros((2 * n + 1, 2 * n + 1), np.float32)
    t = np.linspace(-half, half, num=max(int(np.ceil(length)) * 4, 2))
    ys = np.rint(n + t * np.sin(angle)).astype(int)
    xs = np.rint(n + t * np.cos(angle)).astype(int)
    np.add.at(k, (ys, xs), 1.0)
    return k / k.sum()


def _encode_decode(x: np.ndarray, fmt: str, **save_kwargs: object) -> np.ndarray:
    buf = io.BytesIO()
    Image.fromarray(_to_uint8(x)).save(buf, format=fmt, **save_kwargs)
    buf.seek(0)
    with Image.open(buf) as im:
        return np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0


def _scale_chroma(x: np.ndarray, factor: float) -> np.ndarray:
    ycc = _rgb_to_ycc(x)
    ycc[..., 1:] *= factor
    return _ycc_to_rgb(ycc)


# ------------------------------------------------------------------------------------------- blur


@_register("gaussian_blur", kadid_type=1, params=(0.5, 1.0, 1.5, 2.5, 4.5))
def _gaussian_blur(x: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    s = sigma * _scale(x)
    return ndimage.gaussian_filter(x, sigma=(s, s, 0), mode="reflect")


@_register("lens_blur", kadid_type=2, params=(1.0, 2.0, 4.0, 6.0, 8.0))
def _lens_blur(x: np.ndarray, radius: float, rng: np.random.Generator) -> np.ndarray:
    return _filter_channels(x, _disk_kernel(radius * _scale(x)))


@_register("motion_blur", kadid_type=3, params=(3.0, 5.0, 9.0, 13.0, 21.0))
def _motion_blur(x: np.ndarray, length: float, rng: np.random.Generator) -> np.ndarray:
    angle = float(rng.uniform(0.0, np.pi))
    return _filter_channels(x, _line_kernel(length * _scale(x), angle))


# ------------------------------------------------------------------------------------------ colour


@_register("color_diffusion", kadid_type=4, params=(1.0, 3.0, 6.0, 8.0, 12.0))
def _color_diffusion(x: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    s = sigma * _scale(x)
    ycc = _rgb_to_ycc(x)
    ycc[..., 1:] = ndimage.gaussian_filter(ycc[..., 1:], sigma=(s, s, 0), mode="reflect")
    return _ycc_to_rgb(ycc)


@_register("color_shift", kadid_type=5, params=(1.0, 3.0, 6.0, 8.0, 12.0))
def _color_shift(x: np.ndarray, pixels: float, rng: np.random.Generator) -> np.ndarray:
    """Mis-registration: one colour channel translated against the other two."""
    channel = int(rng.integers(0, 3))
    angle = float(rng.uniform(0.0, 2.0 * np.pi))
    d = pixels * _scale(x)
    out = x.copy()
    out[..., channel] = ndimage.shift(
        x[..., channel], (d * np.sin(angle), d * np.cos(angle)), order=1, mode="nearest"
    )
    return out


@_register("color_quantization", kadid_type=6, params=(64, 48, 32, 16, 8))
def _color_quantization(x: np.ndarray, colors: float, rng: np.random.Generator) -> np.ndarray:
    im = Image.fromarray(_to_uint8(x)).quantize(
        colors=int(colors), method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE
    )
    return np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0


@_register("desaturate", kadid_type=7, params=(0.4, 0.2, 0.1, 0.0, -0.4))
def _desaturate(x: np.ndarray, factor: float, rng: np.random.Generator) -> np.ndarray:
    """Chroma scaled towards grey (0 = greyscale; negative = complementary hues)."""
    return _scale_chroma(x, factor)


@_register("oversaturate", kadid_type=8, params=(1.4, 1.8, 2.4, 3.3, 4.5))
def _oversaturate(x: np.ndarray, factor: float, rng: np.random.Generator) -> np.ndarray:
    return _scale_chroma(x, factor)


# ------------------------------------------------------------------------------------- compression


@_register("jpeg2000", kadid_type=9, params=(16, 32, 45, 120, 170))
def _jpeg2000(x: np.ndarray, ratio: float, rng: np.random.Generator) -> np.ndarray:
    """JPEG2000 at a compression ratio; WebP at a matching quality when Pillow lacks OpenJPEG."""
    if jpeg2000_codec() == "jpeg2000":
        return _encode_decode(x, "JPEG2000", quality_mode="rates", quality_layers=[float(ratio)])
    quality = {16: 60, 32: 40, 45: 25, 120: 8, 170: 2}[int(ratio)]
    return _encode_decode(x, "WEBP", quality=quality, method=4)


@_register("jpeg", kadid_type=10, params=(43, 36, 24, 7, 4))
def _jpeg(x: np.ndarray, quality: float, rng: np.random.Generator) -> np.ndarray:
    return _encode_decode(x, "JPEG", quality=int(quality), subsampling="4:2:0")


# ------------------------------------------------------------------------------------------- noise


@_register("white_noise", kadid_type=11, params=(0.032, 0.045, 0.055, 0.071, 0.1))
def _white_noise(x: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    return x + rng.normal(0.0, sigma, size=x.shape).astype(np.float32)


@_register("white_noise_color", kadid_type=12, params=(0.02, 0.035, 0.05, 0.07, 0.09))
def _white_noise_color(x: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    """Gaussian noise in YCbCr: sigma on luma, 1.5 sigma on each chroma channel."""
    ycc = _rgb_to_ycc(x)
    scale = np.array([1.0, 1.5, 1.5], np.float32) * sigma
    ycc += rng.normal(0.0, 1.0, size=x.shape).astype(np.float32) * scale
    return _ycc_to_rgb(ycc)


@_register("impulse_noise", kadid_type=13, params=(0.005, 0.01, 0.02, 0.035, 0.05))
def _impulse_noise(x: np.ndarray, density: float, rng: np.random.Generator) -> np.ndarray:
    """Salt and pepper on each sample independently."""
    u = rng.random(size=x.shape)
    out = x.copy()
    out[u < density / 2] = 0.0
    out[u > 1.0 - density / 2] = 1.0
    return out


@_register("multiplicative_noise", kadid_type=14, params=(0.03, 0.07, 0.1, 0.22, 0.32))
def _multiplicative_noise(x: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    """Speckle: x * (1 + n), n ~ N(0, sigma^2)."""
    return x * (1.0 + rng.normal(0.0, sigma, size=x.shape).astype(np.float32))


@_register("denoise", kadid_type=15, params=(0.03, 0.045, 0.06, 0.08, 0.1))
def _denoise(x: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    """White noise followed by a simple denoiser (3x3 median, then a Gaussian that grows with the
    noise): the smeared, plastic look of over-denoised photos."""
    noisy = x + rng.normal(0.0, sigma, size=x.shape).astype(np.float32)
    smooth = ndimage.median_filter(noisy, size=(3, 3, 1), mode="reflect")
    s = (0.5 + 15.0 * sigma) * _scale(x)
    return ndimage.gaussian_filter(smooth, sigma=(s, s, 0), mode="reflect")


# ----------------------------------------------------------------------------- brightness/contrast


@_register("brighten", kadid_type=16, params=(0.1, 0.2, 0.4, 0.7, 1.1))
def _brighten(x: np.ndarray, p: float, rng: np.random.Generator) -> np.ndarray:
    return np.power(np.clip(x, 0.0, 1.0), 1.0 / (1.0 + p))


@_register("darken", kadid_type=17, params=(0.1, 0.25, 0.5, 1.0, 2.0))
def _darken(x: np.ndarray, p: float, rng: np.random.Generator) -> np.ndarray:
    return np.power(np.clip(x, 0.0, 1.0), 1.0 + p)


@_register("mean_shift", kadid_type=18, params=(0.04, 0.08, 0.12, 0.16, 0.2))
def _mean_shift(x: np.ndarray, shift: float, rng: np.random.Generator) -> np.ndarray:
    """A constant added to every sample, up or down (the sign is drawn from ``rng``)."""
    sign = 1.0 if rng.random() < 0.5 else -1.0
    return x + sign * shift


@_register("contrast_change", kadid_type=25, params=(0.2, 0.4, 0.6, 0.8, 1.0))
def _contrast_change(x: np.ndarray, amount: float, rng: np.random.Generator) -> np.ndarray:
    """Contrast around the mean scaled by ``1 - 0.75 * amount`` (lower) or ``1 + 1.5 * amount``
    (higher, clipped); the direction is drawn from ``rng``."""
    factor = 1.0 - 0.75 * amount if rng.random() < 0.5 else 1.0 + 1.5 * amount
    mean = x.mean(axis=(0, 1), keepdims=True)
    return mean + (x - mean) * factor


# ------------------------------------------------------------------------------------ spatial/other


@_register("jitter", kadid_type=19, params=(0.5, 1.0, 2.0, 3.0, 4.5))
def _jitter(x: np.ndarray, amplitude: float, rng: np.random.Generator) -> np.ndarray:
    """Every pixel replaced by a neighbour up to ``amplitude`` pixels away."""
    h, w = x.shape[:2]
    a = amplitude * _scale(x)
    dy = np.rint(rng.uniform(-a, a, size=(h, w))).astype(int)
    dx = np.rint(rng.uniform(-a, a, size=(h, w))).astype(int)
    ys = np.clip(np.arange(h)[:, None] + dy, 0, h - 1)
    xs = np.clip(np.arange(w)[None, :] + dx, 0, w - 1)
    return x[ys, xs]


@_register("non_eccentricity_patch", kadid_type=20, params=(20, 40, 60, 80, 100))
def _non_eccentricity_patch(x: np.ndarray, count: float, rng: np.random.Generator) -> np.ndarray:
    """Small patches replaced by copies of nearby patches (count per 512x384 of image area)."""
    h, w = x.shape[:2]
    p = max(3, round(15 * _scale(x)))
    n = max(1, round(count * h * w / (512 * 384)))
    out = x.copy()
    for _ in range(n):
        y0, x0 = int(rng.integers(0, h - p + 1)), int(rng.integers(0, w - p + 1))
        y1 = int(np.clip(y0 + rng.integers(-p, p + 1), 0, h - p))
        x1 = int(np.clip(x0 + rng.integers(-p, p + 1), 0, w - p))
        out[y0 : y0 + p, x0 : x0 + p] = x[y1 : y1 + p, x1 : x1 + p]
    return out


@_register("pixelate", kadid_type=21, params=(2.0, 3.0, 4.0, 6.0, 10.0))
def _pixelate(x: np.ndarray, block: float, rng: np.random.Generator) -> np.ndarray:
    h, w = x.shape[:2]
    b = max(block * _scale(x), 1.25)
    small = (max(1, round(w / b)), max(1, round(h / b)))
    im = Image.fromarray(_to_uint8(x)).resize(small, Image.Resampling.BOX)
    return np.asarray(im.resize((w, h), Image.Resampling.NEAREST), dtype=np.float32) / 255.0


@_register("quantization", kadid_type=22, params=(20, 16, 13, 10, 7))
def _quantization(x: np.ndarray, levels: float, rng: np.random.Generator) -> np.ndarray:
    """Each channel quantised uniformly to ``levels`` grey levels."""
    n = float(levels) - 1.0
    return np.rint(np.clip(x, 0.0, 1.0) * n) / n


@_register("color_block", kadid_type=23, params=(2, 4, 6, 8, 10))
def _color_block(x: np.ndarray, count: float, rng: np.random.Generator) -> np.ndarray:
    """Uniformly coloured square blocks pasted at random places."""
    h, w = x.shape[:2]
    p = max(2, round(32 * _scale(x)))
    out = x.copy()
    for _ in range(int(count)):
        y0, x0 = int(rng.integers(0, h - p + 1)), int(rng.integers(0, w - p + 1))
        out[y0 : y0 + p, x0 : x0 + p] = rng.random(3).astype(np.float32)
    return out


@_register("high_sharpen", kadid_type=24, params=(1.0, 2.0, 3.0, 6.0, 12.0))
def _high_sharpen(x: np.ndarray, amount: float, rng: np.random.Generator) -> np.ndarray:
    """Unsharp masking: x + amount * (x - gaussian(x))."""
    s = max(1.0 * _scale(x), 0.5)
    blurred = ndimage.gaussian_filter(x, sigma=(s, s, 0), mode="reflect")
    return x + amount * (x - blurred)


# The ad-image kinds beyond KADID register themselves into DISTORTIONS on import.
from training.data import distortions_ad  # noqa: E402,F401
