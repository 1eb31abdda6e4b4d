"""Robust scoring modes of ``POST /score?mode=...`` (the defenses of the IQA-defenses benchmark).

* ``plain`` (default): the served score, no defense (no mode object: ``robust_mode`` returns None).
* ``median``: median smoothing (Chiang et al.). n copies of the canonical image get independent
  Gaussian noise of std σ (in [0, 1] pixel units), each copy is clipped to [0, 1], rounded to 8 bits
  (the served ONNX graph takes uint8 crops), cut into the evaluation crops and scored as usual (mean
  of the crops, clamped to the score range). The result is the median of the n scores with its
  certified bounds for an ℓ2 radius R of the canonical image in [0, 1] units
  (``training.median_smoothing``). Overlapping crops share the noise of their shared pixels, so the
  noise is that of one noisy canonical image and R is measured on the canonical image. The clip and
  the rounding are part of the base scorer, so the certificate covers them (docs/ROBUST_MODES.md).
* ``jpeg``: JPEG purification; the canonical image is re-encoded at quality q (Pillow) and decoded
  before its crops are cut and scored.

The bound math and the JPEG round trip are torch-free modules in ``training/`` that the gate's
defense rows use too. A mode's work is timed as the pipeline's "infer" stage.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, Protocol

import numpy as np
from pydantic import BaseModel

from training.jpeg_purification import jpeg_round_trip
from training.median_smoothing import MedianCertificate, certify_median
from training.preprocessing import PreprocessConfig, crop_origins, eval_crops

if TYPE_CHECKING:
    from serving.settings import Settings

__all__ = [
    "MODES",
    "JpegPurification",
    "MedianSmoothing",
    "ModeName",
    "RobustInfo",
    "RobustMode",
    "RobustOutcome",
    "robust_info",
    "robust_mode",
]

ModeName = Literal["plain", "median", "jpeg"]
MODES: tuple[str, ...] = ("plain", "median", "jpeg")

# Per-crop raw scores of a uint8 N×c×c×3 crop batch (the backend's ``infer``).
InferFn = Callable[[np.ndarray], np.ndarray]


@dataclass(frozen=True)
class RobustOutcome:
    """A mode's score (before the pipeline's final clamp) and, for median smoothing, its certificate."""

    score: float
    certificate: MedianCertificate | None = None


class RobustMode(Protocol):
    name: str

    def run(self, canonical: np.ndarray, cfg: PreprocessConfig, infer: InferFn) -> RobustOutcome: ...


def _served_score(crop_scores: np.ndarray, cfg: PreprocessConfig) -> np.ndarray:
    """Score of each image from its K crop scores (rows): the mean, clamped (as the plain pipeline)."""
    return np.clip(crop_scores.mean(axis=-1, dtype=np.float64), cfg.score_min, cfg.score_max)


def _noise_index(height: int, width: int, cfg: PreprocessConfig) -> tuple[int, np.ndarray | None]:
    """Pixels the crops read: their count and, when crops overlap, the index of each crop pixel into
    the distinct pixels (K×c×c), so a pixel two crops share gets one noise value. None: no overlap."""
    c = cfg.crop_size
    origins = crop_origins(height, width, cfg)
    coverage = np.zeros((height, width), dtype=np.int16)
    for y, x in origins:
        coverage[y : y + c, x : x + c] += 1
    if coverage.max() <= 1:
        return len(origins) * c * c, None
    rows = np.arange(c)[:, None] * width + np.arange(c)[None, :]
    flat = np.stack([y * width + x + rows for y, x in origins])
    distinct, inverse = np.unique(flat, return_inverse=True)
    return int(distinct.size), inverse.reshape(flat.shape)


@dataclass(frozen=True)
class MedianSmoothing:
    """``mode=median``: the median of n noisy copies' scores and its bounds at ℓ2 radius ``radius``."""

    n: int = 32
    sigma: float = 0.05
    radius: float = 0.025
    alpha: float = 0.01
    copies_per_batch: int = 8
    seed: int | None = None
    name: str = "median"

    def noisy_crops(
        self, canonical: np.ndarray, cfg: PreprocessConfig, rng: np.random.Generator
    ) -> list[np.ndarray]:
        """The evaluation crops of the n noisy copies, uint8, in batches of ``copies_per_batch``
        copies (each batch m·K×c×c×3, copy-major)."""
        crops = eval_crops(canonical, cfg).astype(np.float32)
        k, c = crops.shape[0], cfg.crop_size
        n_pixels, inverse = _noise_index(canonical.shape[0], canonical.shape[1], cfg)
        scale = np.float32(self.sigma * 255.0)
        batches = []
        for start in range(0, self.n, self.copies_per_batch):
            m = min(self.copies_per_batch, self.n - start)
            noise = rng.standard_normal((m, n_pixels, 3), dtype=np.float32) * scale
            noise = noise.reshape(m, k, c, c, 3) if inverse is None else noise[:, inverse]
            noisy = np.clip(np.rint(crops[None] + noise), 0, 255).astype(np.uint8)
            batches.append(noisy.reshape(m * k, c, c, 3))
        return batches

    def run(self, canonical: np.ndarray, cfg: PreprocessConfig, infer: InferFn) -> RobustOutcome:
        rng = np.random.default_rng(self.seed)
        k = cfg.num_eval_crops
        samples = []
        for batch in self.noisy_crops(canonical, cfg, rng):
            raw = np.asarray(infer(batch), dtype=np.float32).reshape(-1, k)
            samples.append(_served_score(raw, cfg))
        cert = certify_median(
            np.concatenate(samples), self.radius, self.sigma, self.alpha, (cfg.score_min, cfg.score_max)
        )
        return RobustOutcome(score=cert.median, certificate=cert)


@dataclass(frozen=True)
class JpegPurification:
    """``mode=jpeg``: score the canonical image after a JPEG round trip at ``quality``."""

    quality: int = 75
    name: str = "jpeg"

    def run(self, canonical: np.ndarray, cfg: PreprocessConfig, infer: InferFn) -> RobustOutcome:
        crops = eval_crops(jpeg_round_trip(canonical, self.quality), cfg)
        raw = np.asarray(infer(crops), dtype=np.float32).reshape(1, -1)
        return RobustOutcome(score=float(_served_score(raw, cfg)[0]))


def robust_mode(name: str, settings: Settings) -> RobustMode | None:
    """The mode object for ``?mode=name`` with the gateway's settings; None for plain scoring."""
    if name == "median":
        return MedianSmoothing(
            n=settings.median_n, sigma=settings.median_sigma, radius=settings.median_radius,
            alpha=settings.median_alpha, copies_per_batch=settings.median_copies_per_batch,
            seed=settings.median_seed,
        )
    if name == "jpeg":
        return JpegPurification(quality=settings.jpeg_quality)
    if name == "plain":
        return None
    raise ValueError(f"unknown scoring mode {name!r}; expected one of {MODES}")


class RobustInfo(BaseModel):
    """The response's ``robust`` object: the mode and, for median smoothing, its certificate (the score
    of any image within ℓ2 ``radius`` of the canonical image, [0, 1] pixel units, is certified to lie
    in [lower, upper] with confidence 1 − alpha); for JPEG purification, the quality."""

    mode: str
    lower: float | None = None
    upper: float | None = None
    radius: float | None = None
    n: int | None = None
    sigma: float | None = None
    alpha: float | None = None
    quality: int | None = None


def robust_info(mode: RobustMode | None, outcome_bounds: tuple[float, float] | None) -> RobustInfo | None:
    """What the response says about ``mode`` (None for plain scoring)."""
    if isinstance(mode, MedianSmoothing) and outcome_bounds is not None:
        return RobustInfo(
            mode=mode.name, lower=outcome_bounds[0], upper=outcome_bounds[1], radius=mode.radius,
            n=mode.n, sigma=mode.sigma, alpha=mode.alpha,
        )
    if isinstance(mode, JpegPurification):
        return RobustInfo(mode=mode.name, quality=mode.quality)
    return None
