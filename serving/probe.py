"""The online FGSM self-probe: the gate's FGSM step on the served crops, as an ONNX graph (no torch).

``<repository>/<name>_probe/<version>/model.onnx`` (export/probe_export.py) takes the scorer's crops
and returns their clean scores, the scores after one FGSM step (the gate's attack: L_mid objective,
ε = 0.005, delivered on the 8-bit grid) and the perturbation. ``Prober.run`` averages the crop scores
like the pipeline does and reports::

    adv_score   the image's score after the FGSM step (mean of the crops, clamped to the score range)
    delta       adv_score − score (the served score; in a robust mode the probe's own clean score)
    epsilon     the attack's ℓ∞ budget in [0, 1] pixel units
    linearity   max over the crops of |Δₖ| / (‖∇ₖ‖₁ · one 8-bit level): how far each crop's FGSM step
                moved its score against the gradient's first-order prediction (None: a probe graph
                without the ``grad_l1`` output). Images attacked by PGD step back along the attack
                much further than the gradient predicts (docs/PROBE.md, "Linearity").
    flagged     |delta| > threshold (IQA_PROBE_THRESHOLD) or linearity > linearity threshold
                (IQA_PROBE_LINEARITY_THRESHOLD); each defaults to the calibrated value in the probe's
                metadata.json (docs/PROBE.md); ``flagged_by`` names the statistics that crossed
    perturbation_png   (on request) the first crop's perturbation, amplified: −ε..+ε -> 0..255

The probe runs embedded in ONNX Runtime for every backend, IQA_BACKEND=triton included (Triton can
serve the same graph as ``iqa_probe``; the gateway does not call it). A model version without a
probe folder serves scores as before; asking it for a probe gets 422 ``probe_unavailable``.
"""

from __future__ import annotations

import base64
import io
import logging
import math
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from pydantic import BaseModel

from serving.errors import InternalError, ModelLoadError, NotReady, ProbeUnavailable
from serving.model_store import ModelVersion, read_metadata
from serving.settings import Settings

__all__ = [
    "DEFAULT_THRESHOLD",
    "PROBE_SUFFIX",
    "ProbeInfo",
    "ProbeOutputs",
    "ProbeResult",
    "ProbeUnavailable",
    "Prober",
    "linearity",
    "load_prober",
    "perturbation_png",
    "probe_info",
    "probe_model_path",
    "wants_probe",
]

logger = logging.getLogger(__name__)

PROBE_SUFFIX = "_probe"
MODEL_FILE = "model.onnx"
METADATA_FILE = "metadata.json"
OUTPUTS = ("clean_score", "adv_score", "perturbation")  # the probe graph's required outputs
GRAD_OUTPUT = "grad_l1"  # per-crop ‖∇ₓ L_mid‖₁; graphs exported before it lack it (no linearity)
# Used only when neither IQA_PROBE_THRESHOLD nor the probe's metadata.json gives one (docs/PROBE.md).
DEFAULT_THRESHOLD = 1.0


@dataclass(frozen=True)
class ProbeResult:
    """What the probe found for one image (see the module docstring)."""

    adv_score: float
    delta: float
    epsilon: float
    flagged: bool
    perturbation_png: bytes | None = None
    linearity: float | None = None
    flagged_by: tuple[str, ...] = ()


@dataclass(frozen=True)
class ProbeOutputs:
    """The probe graph's outputs for one image's crops: per-crop clean and FGSM scores (raw, as the
    graph serves them), the NHWC perturbation, and the per-crop gradient ℓ1 norm (None: an older graph)."""

    clean: np.ndarray
    adv: np.ndarray
    perturbation: np.ndarray
    grad_l1: np.ndarray | None


def linearity(clean: np.ndarray, adv: np.ndarray, grad_l1: np.ndarray, epsilon: float) -> float:
    """max over crops of |adv − clean| / (grad_l1 · step), step = the FGSM step on the 8-bit grid
    (the largest multiple of 1/255 within ε); 0 for a crop whose gradient is 0 and score unmoved."""
    step = np.floor(epsilon * 255.0 + 1e-6) / 255.0
    moved = np.abs(adv.astype(np.float64) - clean)
    predicted = np.asarray(grad_l1, dtype=np.float64) * step
    ratio = np.divide(moved, predicted, out=np.where(moved > 0, np.inf, 0.0), where=predicted > 0)
    return float(ratio.max()) if ratio.size else 0.0


def probe_model_path(repository: Path, name: str, version: int) -> Path:
    """``<repository>/<name>_probe/<version>/model.onnx``."""
    return Path(repository) / f"{name}{PROBE_SUFFIX}" / str(version) / MODEL_FILE


def perturbation_png(delta: np.ndarray, epsilon: float) -> bytes:
    """A C×C×3 perturbation (pixel units, on the 8-bit grid) as a PNG amplified so that −ε..+ε maps to
    0..255 with 128 = unchanged: 128 + round(levels · 127.5 / (255·ε)), levels = the 8-bit steps."""
    levels = np.rint(np.asarray(delta, dtype=np.float64) * 255.0)
    pixels = np.clip(128 + np.rint(levels * 127.5 / (255.0 * epsilon)), 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels, mode="RGB").save(buffer, format="PNG")
    return buffer.getvalue()


class Prober:
    """An ONNX Runtime session over a probe graph plus the threshold that turns delta into a flag."""

    def __init__(
        self,
        model_path: Path,
        *,
        score_range: tuple[float, float],
        threshold: float | None = None,
        linearity_threshold: float | None = None,
        intra_op_threads: int = 0,
        use_cuda: bool = False,
    ) -> None:
        self.model_path = Path(model_path)
        self.score_range = score_range
        self.metadata = read_metadata(self.model_path.parent / METADATA_FILE)
        probe_meta = self.metadata.get("probe") or {}
        self.epsilon = float(probe_meta.get("eps", 0.005))
        calibrated = self.metadata.get("threshold") or {}
        self.threshold = float(
            threshold if threshold is not None else calibrated.get("abs_delta") or DEFAULT_THRESHOLD
        )
        # None: linearity is reported but never flags (no calibrated value and none configured)
        lin = linearity_threshold if linearity_threshold is not None else calibrated.get("linearity")
        self.linearity_threshold = float(lin) if lin is not None else None
        self._has_grad = False
        self._intra_op_threads = intra_op_threads
        self._use_cuda = use_cuda
        self._session: Any = None

    def load(self) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = self._intra_op_threads
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        providers = ["CPUExecutionProvider"]
        if self._use_cuda and "CUDAExecutionProvider" in ort.get_available_providers():
            providers.insert(0, "CUDAExecutionProvider")
        try:
            self._session = ort.InferenceSession(str(self.model_path), options, providers=providers)
        except Exception as exc:  # ORT's own exception types
            raise ModelLoadError(f"onnxruntime cannot load the probe {self.model_path}: {exc}") from exc
        names = {o.name for o in self._session.get_outputs()}
        if not set(OUTPUTS) <= names:
            raise ModelLoadError(f"{self.model_path}: expected outputs {OUTPUTS}, found {sorted(names)}")
        self._has_grad = GRAD_OUTPUT in names
        logger.info(
            "probe ready: %s (flags |delta| > %g, linearity > %s)",
            self.model_path,
            self.threshold,
            self.linearity_threshold if self._has_grad and self.linearity_threshold is not None else "off",
        )

    def infer(self, crops: np.ndarray) -> ProbeOutputs:
        """The probe graph on one image's uint8 crops (one ONNX Runtime call)."""
        if self._session is None:
            raise NotReady("the probe model is not loaded")
        names = [*OUTPUTS, GRAD_OUTPUT] if self._has_grad else list(OUTPUTS)
        clean, adv, delta, *grad = self._session.run(names, {"image": np.ascontiguousarray(crops)})
        return ProbeOutputs(clean=clean, adv=adv, perturbation=delta, grad_l1=grad[0] if grad else None)

    def evaluate(
        self, out: ProbeOutputs, score: float | None = None, perturbation: bool = False
    ) -> ProbeResult:
        """The probe's verdict from its outputs; ``score`` is the served score (None: the probe's clean
        pass)."""
        lo, hi = self.score_range
        adv_score = min(max(float(np.mean(out.adv, dtype=np.float64)), lo), hi)
        reference = (
            score if score is not None else min(max(float(np.mean(out.clean, dtype=np.float64)), lo), hi)
        )
        if not (math.isfinite(adv_score) and math.isfinite(reference)):
            raise InternalError("the probe returned a non-finite score")
        diff = adv_score - reference
        lin = None
        if out.grad_l1 is not None:
            lin = linearity(np.clip(out.clean, lo, hi), np.clip(out.adv, lo, hi), out.grad_l1, self.epsilon)
        flagged_by: list[str] = []
        if abs(diff) > self.threshold:
            flagged_by.append("delta")
        if lin is not None and self.linearity_threshold is not None and lin > self.linearity_threshold:
            flagged_by.append("linearity")
        return ProbeResult(
            adv_score=adv_score,
            delta=diff,
            epsilon=self.epsilon,
            flagged=bool(flagged_by),
            perturbation_png=perturbation_png(out.perturbation[0], self.epsilon) if perturbation else None,
            linearity=lin,
            flagged_by=tuple(flagged_by),
        )

    def run(self, crops: np.ndarray, score: float | None = None, perturbation: bool = False) -> ProbeResult:
        """Probe one image's uint8 crops; ``score`` is the served score (None: the probe's clean pass)."""
        return self.evaluate(self.infer(crops), score, perturbation)

    def warm_up(self, crop_size: int, n: int) -> None:
        self.run(np.full((n, crop_size, crop_size, 3), 128, dtype=np.uint8))

    def close(self) -> None:
        self._session = None


def load_prober(model: ModelVersion, settings: Settings) -> Prober | None:
    """Load and warm up the probe of the served version, or None (logged) when it has none."""
    path = probe_model_path(settings.model_repository, model.name, model.version)
    if not path.is_file():
        logger.info("no probe model at %s: /score?probe=true answers 422 probe_unavailable", path)
        if settings.probe_rate > 0:
            logger.warning("IQA_PROBE_RATE=%g but no probe model: nothing is probed", settings.probe_rate)
        return None
    cfg = model.preprocess
    prober = Prober(
        path,
        score_range=(cfg.score_min, cfg.score_max),
        threshold=settings.probe_threshold,
        linearity_threshold=settings.probe_linearity_threshold,
        intra_op_threads=settings.ort_intra_op_threads,
        use_cuda=settings.ort_use_cuda,
    )
    prober.load()
    prober.warm_up(cfg.crop_size, cfg.num_eval_crops)
    return prober


class ProbeInfo(BaseModel):
    """The ``probe`` object of a /score response (perturbation_png: base64 PNG, only on request)."""

    adv_score: float
    delta: float
    epsilon: float
    flagged: bool
    linearity: float | None = None
    flagged_by: list[str] = []
    perturbation_png: str | None = None


def probe_info(result: ProbeResult | None) -> ProbeInfo | None:
    if result is None:
        return None
    png = base64.b64encode(result.perturbation_png).decode("ascii") if result.perturbation_png else None
    return ProbeInfo(
        adv_score=result.adv_score,
        delta=result.delta,
        epsilon=result.epsilon,
        flagged=result.flagged,
        linearity=None
        if result.linearity is None or not math.isfinite(result.linearity)
        else result.linearity,
        flagged_by=list(result.flagged_by),
        perturbation_png=png,
    )


def wants_probe(requested: bool, rate: float, available: bool) -> bool:
    """Probe when asked (``?probe=true``) or, with a probe model loaded, for a ``rate`` share of requests."""
    return requested or (available and rate > 0 and random.random() < rate)
