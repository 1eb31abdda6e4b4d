"""Robustness of IQA scores under an attack (NT paper supplement S7, Tables 1-2 / S4-S5, Eq. S12).

``attack_metrics(mos, clean, adv)`` evaluates every accuracy metric of ``training.metrics`` twice, MOS
vs after-attack scores (``mos_vs_adv``) and before vs after (``clean_vs_adv``), plus the R robustness
of Eq. S12 (``r_robustness``), how many images sit on R's zero-change floor (``r_floor_hits``), the
mean |Δscore| and the scale-free ``relative_rmse``. Inputs are score arrays; the gradient norms of the
models live in ``training.gate.grad_norms``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from training.metrics import ArrayLike, iqa_metrics, paired

__all__ = ["R_MIN_CHANGE", "attack_metrics", "r_floor_hits", "r_robustness", "relative_rmse"]

# |f(x) − f(x')| is floored at this value in R so that an image the attack did not move (Δ = 0,
# common after 8-bit quantization) contributes a large but finite term: up to log10(100 / 1e-4) = 6,
# against a mean of about 1 over moved images. ``r_floor_hits`` counts such images for the report.
R_MIN_CHANGE = 1e-4


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
    f, f_adv = paired(clean, adv)
    allowed = np.maximum(beta1 - f, f - beta2)
    change = np.maximum(np.abs(f - f_adv), min_change)
    return float(np.mean(np.log10(allowed / change)))


def r_floor_hits(clean: ArrayLike, adv: ArrayLike, min_change: float = R_MIN_CHANGE) -> int:
    """How many images the attack moved by less than ``min_change`` (R's floor): each adds a term of
    up to log10(range / min_change) = 6 to R, so a few of them can carry a mean of about 1."""
    f, f_adv = paired(clean, adv)
    return int(np.count_nonzero(np.abs(f - f_adv) < min_change))


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
    "r_floor_hits": images at R's floor, "mean_abs_delta": mean |f(x') − f(x)|, "rel_rmse": ...}``
    where each inner dict is ``iqa_metrics``. Metrics that
    are undefined (e.g. SROCC when all scores are equal) are NaN.
    """
    mos_a, clean_a = paired(mos, clean)
    _, adv_a = paired(mos, adv)
    return {
        "mos_vs_clean": iqa_metrics(clean_a, mos_a, fit_logistic),
        "mos_vs_adv": iqa_metrics(adv_a, mos_a, fit_logistic),
        "clean_vs_adv": iqa_metrics(adv_a, clean_a, fit_logistic),
        "r": r_robustness(clean_a, adv_a, beta1, beta2),
        "r_floor_hits": r_floor_hits(clean_a, adv_a),
        "mean_abs_delta": float(np.mean(np.abs(adv_a - clean_a))),
        "rel_rmse": relative_rmse(clean_a, adv_a),
    }


def relative_rmse(clean: ArrayLike, adv: ArrayLike) -> float:
    """RMSE between the scores before and after an attack in units of the spread (standard deviation)
    of the clean scores. Raw score points reward a model that squeezes all its scores into a narrow
    band (the cheapest way to a small input gradient); this ratio does not: scaling the model's output
    by any factor leaves it unchanged. NaN when the clean scores do not vary."""
    f, f_adv = paired(clean, adv)
    spread = float(np.std(f))
    return float(np.sqrt(np.mean((f_adv - f) ** 2)) / spread) if spread > 0 else float("nan")
