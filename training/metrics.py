"""IQA accuracy, attack robustness and gradient-norm metrics (NT paper supplement S7; Zhang et al.).

Accuracy (Eq. S8-S11): ``rmse``, ``srocc`` (Spearman), ``krocc`` (Kendall τ-b), ``plcc`` (Pearson,
optionally after the four-parameter logistic map of Zhang et al. Eq. 5), ``iqa_metrics``.

Robustness: ``attack_metrics(mos, clean, adv)`` evaluates every accuracy metric twice, MOS vs
after-attack scores (``mos_vs_adv``) and before vs after (``clean_vs_adv``), as in Tables 1-2 / S4-S5
of the NT paper, plus the R robustness of Eq. S12 (``r_robustness``).

Gradient norms (Theorem 1: the score change under an ℓ∞ attack of size ε is ≈ ε·‖∇ₓf(x)‖₁):
``grad_norm_l1`` (exact, autograd), ``grad_norm_fd`` (finite difference of Eq. 6) and
``grad_norm_report``; both reuse ``training.nt``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import torch
from scipy import optimize, stats
from torch import nn

from training.attacks.base import eval_mode, input_gradient, iter_image_batches, model_device, predict
from training.nt import finite_difference_norm, input_grad_l1

__all__ = [
    "attack_metrics",
    "fit_logistic_4param",
    "grad_norm_fd",
    "grad_norm_fd_steps",
    "grad_norm_l1",
    "grad_norm_report",
    "iqa_metrics",
    "krocc",
    "logistic_4param",
    "plcc",
    "r_robustness",
    "relative_rmse",
    "rmse",
    "srocc",
]

log = logging.getLogger(__name__)

ArrayLike = np.ndarray | torch.Tensor | Sequence[float]

# |f(x) − f(x')| is floored at this value in R so that an image the attack did not move (Δ = 0,
# common after 8-bit quantization) contributes a large but finite term: log10(100 / 1e-4) = 6.
R_MIN_CHANGE = 1e-4


def _as_array(values: ArrayLike) -> np.ndarray:
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu().numpy()
    return np.asarray(values, dtype=np.float64).reshape(-1)


def _pair(pred: ArrayLike, target: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    p, t = _as_array(pred), _as_array(target)
    if p.shape != t.shape:
        raise ValueError(f"length mismatch: {p.shape[0]} predictions vs {t.shape[0]} targets")
    if p.size == 0:
        raise ValueError("metrics need at least one sample")
    return p, t


def rmse(pred: ArrayLike, target: ArrayLike) -> float:
    """Eq. S8: sqrt(mean((y − f)²))."""
    p, t = _pair(pred, target)
    return float(np.sqrt(np.mean((p - t) ** 2)))


def srocc(pred: ArrayLike, target: ArrayLike) -> float:
    """Eq. S9: Spearman rank-order correlation (NaN if either side is constant)."""
    p, t = _pair(pred, target)
    return float(stats.spearmanr(p, t)[0])


def krocc(pred: ArrayLike, target: ArrayLike) -> float:
    """Eq. S10: Kendall rank-order correlation (scipy's τ-b, which equals Eq. S10 without ties)."""
    p, t = _pair(pred, target)
    return float(stats.kendalltau(p, t)[0])


def logistic_4param(f: np.ndarray, b1: float, b2: float, b3: float, b4: float) -> np.ndarray:
    """Zhang et al. Eq. 5: (β1 − β2) / (1 + exp(−(f − β3)/|β4|)) + β2."""
    z = np.clip(-(f - b3) / max(abs(b4), 1e-12), -500.0, 500.0)
    return (b1 - b2) / (1.0 + np.exp(z)) + b2


def fit_logistic_4param(pred: ArrayLike, target: ArrayLike) -> tuple[float, float, float, float]:
    """Least-squares fit of Eq. 5 mapping predictions to targets (VQEG initialisation: β1 = max y,
    β2 = min y, β3 = mean f, β4 = std f)."""
    p, t = _pair(pred, target)
    init = [float(t.max()), float(t.min()), float(p.mean()), float(p.std()) or 1.0]
    # "trf" takes finite-difference steps relative to max(1, |β|): MINPACK's "lm" steps relative to |β|
    # and stalls when an initial value is ~0 (e.g. β3 = mean of centred predictions).
    params, _ = optimize.curve_fit(logistic_4param, p, t, p0=init, method="trf", max_nfev=20000)
    b1, b2, b3, b4 = (float(v) for v in params)
    return b1, b2, b3, b4


def plcc(pred: ArrayLike, target: ArrayLike, fit_logistic: bool = False) -> float:
    """Eq. S11: Pearson linear correlation; with ``fit_logistic`` the predictions are first mapped by
    the fitted four-parameter logistic (Eq. 5 of Zhang et al.). If that fit does not converge the raw
    predictions are used (logged)."""
    p, t = _pair(pred, target)
    if fit_logistic:
        try:
            p = logistic_4param(p, *fit_logistic_4param(p, t))
        except (RuntimeError, ValueError) as exc:
            log.warning("4-parameter logistic fit failed (%s); PLCC on raw predictions", exc)
    return float(stats.pearsonr(p, t)[0])


def iqa_metrics(pred: ArrayLike, target: ArrayLike, fit_logistic: bool = False) -> dict[str, float]:
    """RMSE, SROCC, PLCC and KROCC of ``pred`` against ``target``."""
    return {
        "rmse": rmse(pred, target),
        "srocc": srocc(pred, target),
        "plcc": plcc(pred, target, fit_logistic=fit_logistic),
        "krocc": krocc(pred, target),
    }


def r_robustness(
    clean: ArrayLike,
    adv: ArrayLike,
    beta1: float = 100.0,
    beta2: float = 0.0,
    min_change: float = R_MIN_CHANGE,
) -> float:
    """R robustness, NT supplement Eq. S12 (= Zhang et al. Eq. 6), higher is more robust:

        R = (1/N) Σᵢ log10( max{β1 − f(xᵢ), f(xᵢ) − β2} / |f(xᵢ) − f(x'ᵢ)| )

    ``clean`` = f(xᵢ), the prediction on the *clean* image (numerator: the largest change the score
    range allows from there), ``adv`` = f(x'ᵢ) after the attack. β1 = 100, β2 = 0 on our score scale
    (the NT paper's choice). The papers write "log"; the NT authors' code uses log10, as here.
    |Δ| is floored at ``min_change`` so an unmoved image gives a finite term.
    """
    if not beta1 > beta2:
        raise ValueError("R needs beta1 > beta2")
    f, f_adv = _pair(clean, adv)
    allowed = np.maximum(beta1 - f, f - beta2)
    change = np.maximum(np.abs(f - f_adv), min_change)
    return float(np.mean(np.log10(allowed / change)))


def attack_metrics(
    mos: ArrayLike,
    clean: ArrayLike,
    adv: ArrayLike,
    beta1: float = 100.0,
    beta2: float = 0.0,
    fit_logistic: bool = False,
) -> dict[str, Any]:
    """Robustness of a model under one attack.

    Returns ``{"mos_vs_clean": {...}, "mos_vs_adv": {...}, "clean_vs_adv": {...}, "r": R,
    "mean_abs_delta": mean |f(x') − f(x)|}`` where each inner dict is ``iqa_metrics``. Metrics that
    are undefined (e.g. SROCC when all scores are equal) are NaN.
    """
    mos_a, clean_a = _pair(mos, clean)
    _, adv_a = _pair(mos, adv)
    return {
        "mos_vs_clean": iqa_metrics(clean_a, mos_a, fit_logistic),
        "mos_vs_adv": iqa_metrics(adv_a, mos_a, fit_logistic),
        "clean_vs_adv": iqa_metrics(adv_a, clean_a, fit_logistic),
        "r": r_robustness(clean_a, adv_a, beta1, beta2),
        "mean_abs_delta": float(np.mean(np.abs(adv_a - clean_a))),
        "rel_rmse": relative_rmse(clean_a, adv_a),
    }


def relative_rmse(clean: ArrayLike, adv: ArrayLike) -> float:
    """RMSE between the scores before and after an attack in units of the spread (standard deviation)
    of the clean scores. Raw score points reward a model that squeezes all its scores into a narrow
    band (the cheapest way to a small input gradient); this ratio does not: scaling the model's output
    by any factor leaves it unchanged. NaN when the clean scores do not vary."""
    f, f_adv = _pair(clean, adv)
    spread = float(np.std(f))
    return float(np.sqrt(np.mean((f_adv - f) ** 2)) / spread) if spread > 0 else float("nan")


def grad_norm_l1(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Exact ‖∇ₓ f(x)‖₁ per image (autograd, ``training.nt.input_grad_l1``), in eval mode, on CPU."""
    x = x.detach().to(model_device(model), torch.float32)
    with eval_mode(model), torch.enable_grad():
        return input_grad_l1(model, x).detach().cpu()


def grad_norm_fd(model: nn.Module, x: torch.Tensor, h: float = 0.01) -> torch.Tensor:
    """Finite-difference estimate |f(x + h·d) − f(x)| / h with d = sign(∇ₓf(x)) (Eq. 6,
    ``training.nt.finite_difference_norm``), per image, in eval mode, on CPU. Equals ‖∇ₓf‖₁ for a
    linear f as long as x + h·d stays inside [0, 1] (the perturbed input is clamped)."""
    return grad_norm_fd_steps(model, x, [h])[0]


def grad_norm_fd_steps(model: nn.Module, x: torch.Tensor, hs: Sequence[float]) -> list[torch.Tensor]:
    """``grad_norm_fd`` at several steps h, sharing one direction d and one clean forward."""
    if any(not 0.0 < h <= 1.0 for h in hs):
        raise ValueError("h must be in (0, 1]")
    x = x.detach().to(model_device(model), torch.float32)
    with eval_mode(model):
        d = input_gradient(model, x, lambda pred, _: pred, torch.zeros(x.shape[0], device=x.device)).sign()
        with torch.no_grad():
            pred = predict(model, x)
            return [finite_difference_norm(model, x, pred, d, h).reshape(-1).cpu() for h in hs]


def _correlation(fn: Any, a: np.ndarray, b: np.ndarray) -> float:
    if a.size < 2 or np.all(a == a[0]) or np.all(b == b[0]):
        return math.nan
    return float(fn(a, b)[0])


def _fd_agreement(exact: np.ndarray, fd: np.ndarray, h: float) -> dict[str, float]:
    median_exact = float(np.median(exact)) if exact.size else math.nan
    median_fd = float(np.median(fd)) if fd.size else math.nan
    return {
        "h": h,
        "median_fd": median_fd,
        "median_fd_over_exact": median_fd / median_exact if median_exact > 0 else math.nan,
        "pearson": _correlation(stats.pearsonr, exact, fd),
        "spearman": _correlation(stats.spearmanr, exact, fd),
    }


def grad_norm_report(
    model: nn.Module,
    data: torch.Tensor | Iterable[Any],
    h: float = 0.01,
    batch_size: int = 32,
    check_hs: Sequence[float] = (),
) -> dict[str, Any]:
    """Exact vs finite-difference gradient norms over a tensor or a loader of images.

    Returns ``exact`` and ``fd`` (lists, one value per image), their ``pearson`` and ``spearman``
    correlations, and ``median_exact`` / ``median_fd`` / ``mean_exact``. ``check_hs`` adds
    ``fd_check``: for the training step h and each of these steps, the median FD estimate, its ratio
    to the median exact norm and its correlations with the exact norm. The FD of Eq. 6 is a first-order
    estimate: it approaches ‖∇ₓf‖₁ as h → 0 only while f is linear over the step, so this shows how
    far the model the gate sees is from linear at the step it was trained with.
    """
    hs = [h, *(float(v) for v in check_hs if float(v) != h)]
    exact: list[float] = []
    fds: list[list[float]] = [[] for _ in hs]
    for batch in iter_image_batches(data, batch_size):
        exact.extend(grad_norm_l1(model, batch).tolist())
        for values, fd_h in zip(fds, grad_norm_fd_steps(model, batch, hs), strict=True):
            values.extend(fd_h.tolist())
    e, f = np.asarray(exact), np.asarray(fds[0])
    report: dict[str, Any] = {
        "exact": exact,
        "fd": fds[0],
        "pearson": _correlation(stats.pearsonr, e, f),
        "spearman": _correlation(stats.spearmanr, e, f),
        "median_exact": float(np.median(e)) if e.size else math.nan,
        "median_fd": float(np.median(f)) if f.size else math.nan,
        "mean_exact": float(np.mean(e)) if e.size else math.nan,
        "h": h,
    }
    if len(hs) > 1:
        report["fd_check"] = sorted(
            (_fd_agreement(e, np.asarray(values), step) for step, values in zip(hs, fds, strict=True)),
            key=lambda row: row["h"],
        )
    return report
