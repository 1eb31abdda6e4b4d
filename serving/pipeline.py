"""The one scoring pipeline, each stage timed: decode -> validate -> preprocess -> infer -> postprocess.

Preprocessing is ``training.preprocessing`` (the same code training and export use), driven by the
model's own ``PreprocessConfig`` from its metadata. The HTTP route and the tests both call
``Scorer.score`` / ``score_image_bytes``, so a served score equals an in-process score of the same bytes.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np

from serving.backends.base import Backend
from serving.errors import DeadlineExceeded, ImageTooSmall, InternalError, InvalidImage, TooLarge
from serving.probe import Prober, ProbeResult, ProbeUnavailable
from serving.robust_modes import RobustMode
from training.preprocessing import (
    ImageDecodeError,
    ImageTooLargeError,
    PreprocessConfig,
    decode_image,
    eval_crops,
    resize_canonical,
)

__all__ = ["STAGES", "ScoreResult", "Scorer", "score_image_bytes"]

STAGES = ("decode", "validate", "preprocess", "infer", "postprocess")


@dataclass(frozen=True)
class ScoreResult:
    """One image's score, its number of crops and the seconds spent in each stage."""

    score: float
    crops: int
    timings: dict[str, float] = field(default_factory=dict)
    # the robust scoring mode (serving/robust_modes.py); bounds/radius: median smoothing's certificate
    mode: str = "plain"
    bounds: tuple[float, float] | None = None
    radius: float | None = None
    probe: ProbeResult | None = None  # the FGSM self-probe (serving/probe.py), when it ran


@contextmanager
def _timed(timings: dict[str, float], stage: str) -> Iterator[None]:
    start = time.perf_counter()
    try:
        yield
    finally:
        timings[stage] = time.perf_counter() - start


class Scorer:
    """Scores encoded image bytes with a loaded backend and the model's preprocessing config."""

    def __init__(
        self,
        backend: Backend,
        cfg: PreprocessConfig,
        max_pixels: int | None = None,
        *,
        min_side: int = 1,
        decode_timeout_s: float | None = None,
    ) -> None:
        self.backend = backend
        self.cfg = cfg
        self.max_pixels = min(cfg.max_pixels, max_pixels) if max_pixels else cfg.max_pixels
        self.min_side = max(int(min_side), 1)  # IQA_MIN_IMAGE_SIDE: smaller images get 422
        self.decode_timeout_s = decode_timeout_s  # IQA_DECODE_TIMEOUT_S: checked when the decode ends
        self.prober: Prober | None = None  # the FGSM self-probe (serving/probe.py); set by the app
        # True: a probed request takes its score from the probe graph's clean forward instead of a
        # separate inference (the embedded backend runs the same graph; set by the app, docs/PROBE.md)
        self.share_probe_forward = False

    def score(
        self, data: bytes, robust: RobustMode | None = None, probe: bool = False, perturbation: bool = False
    ) -> ScoreResult:
        """Run every stage; raises InvalidImage / TooLarge for bad input, never a bare decoder error.
        ``robust`` (serving/robust_modes.py) replaces plain inference by a defended score; ``probe``
        adds the FGSM self-probe of the eval crops (stage "probe"; ``perturbation``: with its PNG)."""
        if robust is not None:
            return self._score_robust(data, robust, probe, perturbation)
        timings: dict[str, float] = {}
        image = self._decode_validated(data, timings)
        with _timed(timings, "preprocess"):
            crops = eval_crops(resize_canonical(image, self.cfg), self.cfg)
        if probe and self.share_probe_forward and self.prober is not None:
            return self._score_probed(crops, timings, perturbation)
        with _timed(timings, "infer"):
            scores = np.asarray(self.backend.infer(crops), dtype=np.float32).reshape(-1)
        with _timed(timings, "postprocess"):
            score = self._postprocess(scores, len(crops))
        found = self._probe(timings, crops, score, perturbation) if probe else None
        return ScoreResult(score=score, crops=len(crops), timings=timings, probe=found)

    def _probe(
        self, timings: dict[str, float], crops: np.ndarray, score: float | None, perturbation: bool
    ) -> ProbeResult:
        if self.prober is None:
            raise ProbeUnavailable("this model version has no probe model (<name>_probe/<version>)")
        with _timed(timings, "probe"):
            return self.prober.run(crops, score, perturbation)

    def _score_probed(self, crops: np.ndarray, timings: dict[str, float], perturbation: bool) -> ScoreResult:
        """One probe-graph call scores and probes: its clean forward is the inference (stage "probe";
        no "infer" stage), the same crop scores as the scorer's graph to float error (docs/PROBE.md)."""
        assert self.prober is not None
        with _timed(timings, "probe"):
            outputs = self.prober.infer(crops)
        with _timed(timings, "postprocess"):
            score = self._postprocess(np.asarray(outputs.clean, dtype=np.float32).reshape(-1), len(crops))
        found = self.prober.evaluate(outputs, score, perturbation)
        return ScoreResult(score=score, crops=len(crops), timings=timings, probe=found)

    def _score_robust(
        self, data: bytes, robust: RobustMode, probe: bool = False, perturbation: bool = False
    ) -> ScoreResult:
        timings: dict[str, float] = {}
        image = self._decode_validated(data, timings)
        with _timed(timings, "preprocess"):
            canonical = resize_canonical(image, self.cfg)
        with _timed(timings, "infer"):
            outcome = robust.run(canonical, self.cfg, self.backend.infer)
        with _timed(timings, "postprocess"):
            score = self._postprocess(np.asarray([outcome.score], dtype=np.float64), 1)
        cert = outcome.certificate
        # the probe measures the model at the image's plain crops, against its own clean pass
        found = self._probe(timings, eval_crops(canonical, self.cfg), None, perturbation) if probe else None
        return ScoreResult(
            score=score,
            crops=self.cfg.num_eval_crops,
            timings=timings,
            mode=robust.name,
            bounds=(cert.lower, cert.upper) if cert is not None else None,
            radius=cert.radius if cert is not None else None,
            probe=found,
        )

    def warm_up(self) -> None:
        """One inference at the serving shape, so the first request does not pay for lazy init."""
        c = self.cfg.crop_size
        batch = np.full((self.cfg.num_eval_crops, c, c, 3), 128, dtype=np.uint8)
        self._postprocess(np.asarray(self.backend.infer(batch), dtype=np.float32).reshape(-1), len(batch))

    def _decode_validated(self, data: bytes, timings: dict[str, float]) -> np.ndarray:
        """The decode and validate stages, timed into ``timings`` (shared by plain and robust scoring)."""
        with _timed(timings, "decode"):
            image = self._decode(data)
        with _timed(timings, "validate"):
            self._validate(image)
        return image

    def _decode(self, data: bytes) -> np.ndarray:
        started = time.perf_counter()
        try:
            image = decode_image(data, self.max_pixels)
        except ImageTooLargeError as exc:
            raise TooLarge(str(exc)) from None
        except ImageDecodeError as exc:
            raise InvalidImage(str(exc)) from None
        # A decode cannot be interrupted (Pillow holds the thread); one that overran stops here, before
        # any preprocessing or inference, and the request deadline has freed its client already.
        if self.decode_timeout_s is not None and time.perf_counter() - started > self.decode_timeout_s:
            raise DeadlineExceeded(f"decoding took longer than the {self.decode_timeout_s:g} s limit")
        return image

    def _validate(self, image: np.ndarray) -> None:
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3 or min(image.shape[:2]) < 1:
            raise InvalidImage(f"decoded image has unsupported shape {image.shape}")
        height, width = image.shape[:2]
        if min(height, width) < self.min_side:
            raise ImageTooSmall(
                f"image is {width}x{height} px; both sides must be at least {self.min_side} px"
            )

    def _postprocess(self, scores: np.ndarray, n_crops: int) -> float:
        if scores.shape != (n_crops,):
            raise InternalError(f"model returned {scores.shape[0]} scores for {n_crops} crops")
        score = float(np.mean(scores, dtype=np.float64))
        if not math.isfinite(score):
            raise InternalError("model returned a non-finite score")
        return min(max(score, self.cfg.score_min), self.cfg.score_max)


def score_image_bytes(
    data: bytes, backend: Backend, cfg: PreprocessConfig, max_pixels: int | None = None
) -> float:
    """The score the gateway returns for ``data``: mean of the crop scores, clamped to the score range."""
    return Scorer(backend, cfg, max_pixels).score(data).score
