"""Median smoothing (Chiang et al., NeurIPS 2020, "Detection as regression"): the certified bounds.

Torch-free (NumPy + SciPy), shared by the gateway (``serving/robust_modes.py``) and the gate's
defense rows (``training/gate/defenses.py``): one implementation of the bound math.

The smoothed model of a base scorer f at noise level σ is the p-th percentile
``h_p(x) = inf{y : P[f(x + G) <= y] >= p}``, G ~ N(0, σ² I), and the served value is the median
``h_0.5``. Chiang et al. (Thm. 1): for every δ with ``‖δ‖₂ <= R``,

    h_{p−}(x) <= h_p(x + δ) <= h_{p+}(x),   p± = Φ(Φ⁻¹(p) ± R/σ)   (p = 0.5: p± = Φ(±R/σ)).

This holds for ANY base function f, so a base function that clips and rounds the noisy input to
8 bits (what the gateway feeds its uint8 ONNX graph) is still covered: the quantisation is part of f.

The percentiles are estimated from n samples sorted ascending, ``X_(1) <= ... <= X_(n)``
(``order_statistic_indices``). With N_q the number of samples below the percentile q, a Binomial
variable, the order statistics bound the percentiles with confidence (the estimation step of the
same paper):

* upper: ``P[X_(k) >= h_{p+}] >= P[Binom(n, p+) <= k − 1]``; k_upper is the smallest k that makes
  this at least ``1 − α/2``;
* lower: ``P[X_(k) <= h_{p−}] >= P[Binom(n, p−) >= k]``; k_lower is the largest k that makes this
  at least ``1 − α/2``.

The two bounds hold together with probability ≥ 1 − α (a union bound over the two sides). When n is
too small for a side (no k qualifies), the bound falls back to the end of the score range, which
bounds every score trivially (``MedianCertificate.abstained``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy.stats import binom, norm

__all__ = ["MedianCertificate", "certify_median", "order_statistic_indices", "percentile_levels"]


def percentile_levels(radius: float, sigma: float) -> tuple[float, float]:
    """(p−, p+) = (Φ(−R/σ), Φ(R/σ)): the percentiles that bound the median within ℓ2 radius R."""
    if sigma <= 0 or radius < 0:
        raise ValueError("median smoothing needs sigma > 0 and radius >= 0")
    return float(norm.cdf(-radius / sigma)), float(norm.cdf(radius / sigma))


def order_statistic_indices(
    n: int, radius: float, sigma: float, alpha: float
) -> tuple[int | None, int | None]:
    """1-based (k_lower, k_upper): ``X_(k_lower)`` and ``X_(k_upper)`` of n sorted samples bound the
    smoothed median at any point within ℓ2 radius R, jointly with confidence 1 − α. None = that side
    abstains (n too small for this R/σ and α)."""
    if n < 1:
        raise ValueError("median smoothing needs n >= 1 samples")
    if not 0 < alpha < 1:
        raise ValueError("alpha must be in (0, 1)")
    p_lo, p_hi = percentile_levels(radius, sigma)
    side = alpha / 2
    ks = np.arange(1, n + 1)
    # upper: smallest k with P[Binom(n, p+) <= k - 1] >= 1 - α/2
    up_ok = ks[binom.cdf(ks - 1, n, p_hi) >= 1 - side]
    # lower: largest k with P[Binom(n, p-) >= k] = 1 - cdf(k - 1) >= 1 - α/2, i.e. cdf(k - 1) <= α/2
    lo_ok = ks[binom.cdf(ks - 1, n, p_lo) <= side]
    k_upper = int(up_ok[0]) if up_ok.size else None
    k_lower = int(lo_ok[-1]) if lo_ok.size else None
    return k_lower, k_upper


@dataclass(frozen=True)
class MedianCertificate:
    """The smoothed score of one image and its certified bounds within ℓ2 radius ``radius``."""

    median: float
    lower: float
    upper: float
    radius: float
    sigma: float
    n: int
    alpha: float
    k_lower: int | None
    k_upper: int | None

    @property
    def abstained(self) -> bool:
        """True when a side had too few samples and fell back to the end of the score range."""
        return self.k_lower is None or self.k_upper is None


def certify_median(
    samples: np.ndarray,
    radius: float,
    sigma: float,
    alpha: float,
    score_range: tuple[float, float] = (0.0, 100.0),
) -> MedianCertificate:
    """The median of the n scores of the noisy copies and its bounds (see the module docstring).

    ``samples`` are the base scores f(x + g_i) of n independent noise draws g_i ~ N(0, σ² I)."""
    values = np.sort(np.asarray(samples, dtype=np.float64).reshape(-1))
    if values.size == 0 or not np.all(np.isfinite(values)):
        raise ValueError("median smoothing needs at least one finite sample")
    n = int(values.size)
    k_lower, k_upper = order_statistic_indices(n, radius, sigma, alpha)
    lo_end, hi_end = float(score_range[0]), float(score_range[1])
    median = float(np.median(values))
    lower = float(values[k_lower - 1]) if k_lower is not None else min(lo_end, float(values[0]))
    upper = float(values[k_upper - 1]) if k_upper is not None else max(hi_end, float(values[-1]))
    if not (math.isfinite(median) and lower <= median <= upper):  # an invariant of the indices
        raise ArithmeticError(f"bounds [{lower}, {upper}] do not contain the median {median}")
    return MedianCertificate(
        median=median, lower=lower, upper=upper, radius=float(radius), sigma=float(sigma), n=n,
        alpha=float(alpha), k_lower=k_lower, k_upper=k_upper,
    )
