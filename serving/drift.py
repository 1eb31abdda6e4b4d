"""Score drift against the model's reference distribution: PSI and the two-sample KS statistic.

The reference is ``metadata.json``'s ``reference_distribution`` (written by ``export/``): the served
scores of the validation images (``scores``), plus a histogram and quantiles. Drift compares it with a
sliding window of the last ``window`` scores the gateway returned:

- **PSI** (population stability index) on quantile bins of the reference scores, so every bin holds
  about ``1/bins`` of the reference (no empty reference bin): ``sum((a - e) * ln(a / e))`` over bins,
  with both shares floored at ``eps`` so an empty window bin costs a finite amount. Common reading:
  < 0.1 stable, 0.1-0.2 moderate shift, > 0.2 significant shift.
- **KS**: ``sup_x |F_ref(x) - F_window(x)|`` over the two empirical CDFs (in [0, 1]), the statistic of
  ``scipy.stats.ks_2samp`` computed here with one ``searchsorted`` (no SciPy in the gateway).

``DriftWindow.add`` is O(1); ``DriftWindow.compute`` is O(window log window) and the caller decides
how often to run it (``IQA_DRIFT_RECOMPUTE_EVERY``).
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["PSI_EPSILON", "DriftStats", "DriftWindow", "ReferenceDistribution", "ks_statistic", "psi"]

PSI_EPSILON = 1e-4


def psi(
    expected: Sequence[float] | np.ndarray, actual: Sequence[float] | np.ndarray, eps: float = PSI_EPSILON
) -> float:
    """Population stability index of two bin-share vectors (each normalised to sum 1 here)."""
    e = np.asarray(expected, dtype=np.float64)
    a = np.asarray(actual, dtype=np.float64)
    if e.shape != a.shape or e.ndim != 1 or e.size == 0:
        raise ValueError(f"expected and actual must be 1-D of one length, got {e.shape} and {a.shape}")
    if e.sum() <= 0 or a.sum() <= 0 or (e < 0).any() or (a < 0).any():
        raise ValueError("bin shares must be non-negative with a positive sum")
    e = np.maximum(e / e.sum(), eps)
    a = np.maximum(a / a.sum(), eps)
    return float(np.sum((a - e) * np.log(a / e)))


def ks_statistic(reference_sorted: np.ndarray, sample: Sequence[float] | np.ndarray) -> float:
    """Two-sample KS statistic; ``reference_sorted`` must be sorted ascending."""
    ref = np.asarray(reference_sorted, dtype=np.float64)
    x = np.sort(np.asarray(sample, dtype=np.float64))
    if ref.size == 0 or x.size == 0:
        raise ValueError("both samples must be non-empty")
    points = np.concatenate([ref, x])
    cdf_ref = np.searchsorted(ref, points, side="right") / ref.size
    cdf_x = np.searchsorted(x, points, side="right") / x.size
    return float(np.max(np.abs(cdf_ref - cdf_x)))


@dataclass(frozen=True)
class ReferenceDistribution:
    """The reference scores (sorted), the inner PSI bin edges and the reference share of each bin."""

    scores: np.ndarray
    edges: np.ndarray
    expected: np.ndarray

    @classmethod
    def from_scores(cls, scores: Sequence[float] | np.ndarray, bins: int = 10) -> ReferenceDistribution:
        """Quantile bins of ``scores``: ``bins - 1`` inner edges (ties merged), outer bins open-ended."""
        ref = np.sort(np.asarray(scores, dtype=np.float64).reshape(-1))
        if ref.size < 2 or not np.isfinite(ref).all():
            raise ValueError("the reference needs at least 2 finite scores")
        if bins < 2:
            raise ValueError(f"bins must be >= 2, got {bins}")
        edges = np.unique(np.quantile(ref, np.arange(1, bins) / bins))
        expected = np.bincount(np.searchsorted(edges, ref, side="right"), minlength=edges.size + 1)
        return cls(scores=ref, edges=edges, expected=expected / ref.size)

    @classmethod
    def from_metadata(cls, metadata: Mapping[str, Any], bins: int = 10) -> ReferenceDistribution | None:
        """The model's reference from ``metadata.json``; None when it carries no reference scores."""
        ref = metadata.get("reference_distribution")
        scores = ref.get("scores") if isinstance(ref, Mapping) else None
        if not isinstance(scores, list) or len(scores) < 2:
            return None
        return cls.from_scores(scores, bins)

    def bin_shares(self, sample: np.ndarray) -> np.ndarray:
        counts = np.bincount(np.searchsorted(self.edges, sample, side="right"), minlength=self.edges.size + 1)
        return counts / max(sample.size, 1)


@dataclass(frozen=True)
class DriftStats:
    psi: float
    ks: float
    n: int


class DriftWindow:
    """The last ``size`` scores and their drift against a reference (thread-safe)."""

    def __init__(self, reference: ReferenceDistribution, size: int = 500) -> None:
        if size < 1:
            raise ValueError(f"window size must be >= 1, got {size}")
        self.reference = reference
        self._scores: deque[float] = deque(maxlen=size)
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._scores)

    def add(self, score: float) -> None:
        with self._lock:
            self._scores.append(float(score))

    def compute(self) -> DriftStats | None:
        """PSI and KS of the current window; None while it is empty."""
        with self._lock:
            sample = np.fromiter(self._scores, dtype=np.float64, count=len(self._scores))
        if sample.size == 0:
            return None
        shares = self.reference.bin_shares(sample)
        return DriftStats(
            psi=psi(self.reference.expected, shares),
            ks=ks_statistic(self.reference.scores, sample),
            n=int(sample.size),
        )
