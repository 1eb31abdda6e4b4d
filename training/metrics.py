"""IQA accuracy metrics of predictions against targets (NT paper supplement S7, Eq. S8-S11; Zhang et al.).

``rmse``, ``srocc`` (Spearman), ``krocc`` (Kendall τ-b), ``plcc`` (Pearson, optionally after the
four-parameter logistic map of Zhang et al. Eq. 5) and ``iqa_metrics`` (all four). A logistic fit that
fails falls back to raw Pearson, and says so: ``plcc_logistic`` returns the flag with the value and
``iqa_metrics(..., fit_logistic=True)`` records it as ``plcc_logistic_failed``. Training validates
with them (``training.engine``) and the acceptance gate builds its robustness metrics on them
(``training.gate.metrics``). Inputs are arrays, tensors or sequences of scores; nothing here touches a
model.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import torch
from scipy import optimize, stats

__all__ = [
    "ArrayLike",
    "fit_logistic_4param",
    "iqa_metrics",
    "krocc",
    "logistic_4param",
    "paired",
    "plcc",
    "plcc_logistic",
    "rmse",
    "srocc",
]

log = logging.getLogger(__name__)

ArrayLike = np.ndarray | torch.Tensor | Sequence[float]


def _as_array(values: ArrayLike) -> np.ndarray:
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu().numpy()
    return np.asarray(values, dtype=np.float64).reshape(-1)


def paired(pred: ArrayLike, target: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """Two equally long, non-empty float64 vectors (ValueError otherwise)."""
    p, t = _as_array(pred), _as_array(target)
    if p.shape != t.shape:
        raise ValueError(f"length mismatch: {p.shape[0]} predictions vs {t.shape[0]} targets")
    if p.size == 0:
        raise ValueError("metrics need at least one sample")
    return p, t


def rmse(pred: ArrayLike, target: ArrayLike) -> float:
    """Eq. S8: sqrt(mean((y − f)²))."""
    p, t = paired(pred, target)
    return float(np.sqrt(np.mean((p - t) ** 2)))


def srocc(pred: ArrayLike, target: ArrayLike) -> float:
    """Eq. S9: Spearman rank-order correlation (NaN if either side is constant)."""
    p, t = paired(pred, target)
    return float(stats.spearmanr(p, t)[0])


def krocc(pred: ArrayLike, target: ArrayLike) -> float:
    """Eq. S10: Kendall rank-order correlation (scipy's τ-b, which equals Eq. S10 without ties)."""
    p, t = paired(pred, target)
    return float(stats.kendalltau(p, t)[0])


def logistic_4param(f: np.ndarray, b1: float, b2: float, b3: float, b4: float) -> np.ndarray:
    """Zhang et al. Eq. 5: (β1 − β2) / (1 + exp(−(f − β3)/|β4|)) + β2."""
    z = np.clip(-(f - b3) / max(abs(b4), 1e-12), -500.0, 500.0)
    return (b1 - b2) / (1.0 + np.exp(z)) + b2


def fit_logistic_4param(pred: ArrayLike, target: ArrayLike) -> tuple[float, float, float, float]:
    """Least-squares fit of Eq. 5 mapping predictions to targets (VQEG initialisation: β1 = max y,
    β2 = min y, β3 = mean f, β4 = std f)."""
    p, t = paired(pred, target)
    init = [float(t.max()), float(t.min()), float(p.mean()), float(p.std()) or 1.0]
    # "trf" takes finite-difference steps relative to max(1, |β|): MINPACK's "lm" steps relative to |β|
    # and stalls when an initial value is ~0 (e.g. β3 = mean of centred predictions).
    params, _ = optimize.curve_fit(logistic_4param, p, t, p0=init, method="trf", max_nfev=20000)
    b1, b2, b3, b4 = (float(v) for v in params)
    return b1, b2, b3, b4


def plcc_logistic(pred: ArrayLike, target: ArrayLike) -> tuple[float, bool]:
    """PLCC after mapping the predictions by the fitted four-parameter logistic (Eq. 5 of Zhang et al.),
    and whether that fit *failed*: ``(value, True)`` means the fit raised (it did not converge, or the
    predictions are non-finite or too large to initialise it) and ``value`` is the raw Pearson."""
    p, t = paired(pred, target)
    try:
        mapped = logistic_4param(p, *fit_logistic_4param(p, t))
    except (RuntimeError, ValueError) as exc:
        log.warning("4-parameter logistic fit failed (%s); PLCC on raw predictions", exc)
        return float(stats.pearsonr(p, t)[0]), True
    return float(stats.pearsonr(mapped, t)[0]), False


def plcc(pred: ArrayLike, target: ArrayLike, fit_logistic: bool = False) -> float:
    """Eq. S11: Pearson linear correlation; with ``fit_logistic`` the predictions are first mapped by
    the fitted four-parameter logistic (Eq. 5 of Zhang et al.). If that fit fails the raw predictions
    are used (logged; ``plcc_logistic`` also returns the flag)."""
    if fit_logistic:
        return plcc_logistic(pred, target)[0]
    p, t = paired(pred, target)
    return float(stats.pearsonr(p, t)[0])


def iqa_metrics(pred: ArrayLike, target: ArrayLike, fit_logistic: bool = False) -> dict[str, float]:
    """RMSE, SROCC, PLCC and KROCC of ``pred`` against ``target``. With ``fit_logistic`` PLCC is taken
    after the fitted logistic and ``plcc_logistic_failed`` records whether that fit failed (then PLCC
    is the raw Pearson)."""
    out: dict[str, float] = {"rmse": rmse(pred, target), "srocc": srocc(pred, target)}
    if fit_logistic:
        out["plcc"], out["plcc_logistic_failed"] = plcc_logistic(pred, target)
    else:
        out["plcc"] = plcc(pred, target)
    out["krocc"] = krocc(pred, target)
    return out
