"""Input-gradient norms of a model (Theorem 1 of the NT paper: the score change under an ℓ∞ attack of
size ε is ≈ ε·‖∇ₓf(x)‖₁), as the gate measures them.

``grad_norm_l1`` (exact, autograd), ``grad_norm_fd`` (the finite difference of Eq. 6, one step h),
``grad_norm_fd_steps`` (several steps h sharing one direction) and ``grad_norm_report`` (both over a
set of images, with their agreement); the norms themselves reuse ``training.nt``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import torch
from scipy import stats
from torch import nn

from training.gate.tensors import eval_mode, input_gradient, iter_image_batches, model_device, predict
from training.nt import finite_difference_norm, input_grad_l1

__all__ = ["grad_norm_fd", "grad_norm_fd_steps", "grad_norm_l1", "grad_norm_report"]


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
