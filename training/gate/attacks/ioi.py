"""IOI, the Invisible One-Iteration attack (Shumitskaya, Antsiferova & Vatolin, ICML 2024).

Threat model (white-box, fast): one gradient of the target, then two fixed filters that make the
perturbation hard to see; delivered inside an ℓ∞ ball of radius ε (default 4/255) and [0, 1] on the
8-bit grid. Objective (maximized): L_mid (Eq. S20) by default, or MAE / MSE, with y the clean
prediction (the paper only pushes scores up; L_mid is the gate's objective for every attack).

1. One FGSM step of size α (default ε):  x_p = clip(x + α·sign(∇ₓL), 0, 1), δ = x_p − x.
2. Spectral filter: per image and channel, the ``keep`` (7%) largest-magnitude Fourier coefficients of
   the *clean* image (its mean, its dominant low frequencies and structures) are removed from δ:
   δ_h = IFFT(FFT(δ)·[|FFT(x)| below the top-``keep`` threshold]). The paper writes the result as
   x_low + x_p,high·M + x_high·(1 − M), which is the same image: x + M·δ_h.
3. Texture mask M ∈ [0, 1]: the local coefficient of variation (3×3 standard deviation ÷ mean) per
   channel, divided by its per-image maximum, zeroed below ``mask_floor`` (0.01), square-rooted: flat
   regions stay untouched, textured (and dark, noisy) regions take the step.

The result x + M·δ_h goes through the common delivery (ε-ball, [0, 1], 8 bits). The paper bounds
‖x_adv − x‖∞ by a mean absolute spectral difference instead of a fixed ε; the gate keeps its ℓ∞ budget
so the rows compare. Cost: one forward and one backward per image, plus FFTs.
"""

from __future__ import annotations

import math
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from training.gate.attacks._registry import register_attack
from training.gate.attacks.base import Attack, score_midpoint
from training.gate.attacks.objectives import check_objective, make_objective
from training.gate.tensors import input_gradient, predict

__all__ = ["IOI", "dominant_spectrum", "remove_dominant", "variation_mask"]


def dominant_spectrum(x: torch.Tensor, keep: float) -> torch.Tensor:
    """Boolean N×C×H×W mask of the ``keep`` fraction of largest-magnitude 2-D Fourier coefficients of
    each image channel (at least one coefficient, the mean, when ``keep`` > 0; none when 0), closed
    under conjugation (k and −k together), so that filtering a real signal leaves it real."""
    if keep <= 0:
        return torch.zeros_like(x, dtype=torch.bool)
    magnitude = torch.fft.fft2(x).abs().flatten(2)
    k = max(1, math.ceil(keep * magnitude.shape[-1]))
    threshold = magnitude.topk(k, dim=-1).values[..., -1:]
    mask = (magnitude >= threshold).view_as(x)
    conjugate = torch.roll(torch.flip(mask, dims=(-2, -1)), shifts=(1, 1), dims=(-2, -1))  # index −k
    return mask | conjugate


def remove_dominant(delta: torch.Tensor, dominant: torch.Tensor) -> torch.Tensor:
    """``delta`` without its Fourier coefficients where ``dominant`` is True (real part of the IFFT)."""
    spectrum = torch.fft.fft2(delta).masked_fill(dominant, 0)
    return torch.fft.ifft2(spectrum).real


def variation_mask(x: torch.Tensor, floor: float = 0.01) -> torch.Tensor:
    """N×C×H×W map in [0, 1]: √(cv / max cv) per image, where cv is the 3×3 local standard deviation
    divided by the local mean of each channel (a zero mean counts as 1); values under ``floor`` are 0."""
    padded = F.pad(x, (1, 1, 1, 1), mode="replicate")
    mean = F.avg_pool2d(padded, 3, stride=1)
    var = (F.avg_pool2d(padded.pow(2), 3, stride=1) - mean.pow(2)).clamp_min(0.0)
    cv = var.sqrt() / torch.where(mean > 0, mean, torch.ones_like(mean))
    peak = cv.flatten(1).amax(1).clamp_min(1e-12).view(-1, 1, 1, 1)
    cv = cv / peak
    return torch.where(cv < floor, torch.zeros_like(cv), cv).sqrt()


@register_attack
class IOI(Attack):
    """IOI (white-box, one iteration). ℓ∞, ε = 4/255; one sign step of α = ε (default) on objective
    ``mid`` (L_mid) | ``mae`` | ``mse``, minus the clean image's ``keep`` = 7% dominant Fourier
    coefficients, times the texture mask. Deterministic (no random start)."""

    name: ClassVar[str] = "ioi"

    def __init__(
        self,
        eps: float = 4 / 255,
        alpha: float | None = None,
        keep: float = 0.07,
        mask_floor: float = 0.01,
        objective: str = "mid",
    ) -> None:
        super().__init__(eps)
        self.alpha = float(alpha) if alpha is not None else float(eps)
        if self.alpha <= 0:
            raise ValueError("alpha must be > 0")
        if not 0.0 <= keep < 1.0:
            raise ValueError("keep must be in [0, 1)")
        if not 0.0 <= mask_floor < 1.0:
            raise ValueError("mask_floor must be in [0, 1)")
        self.keep = float(keep)
        self.mask_floor = float(mask_floor)
        self.objective = check_objective(objective)

    def perturb(self, model: nn.Module, x: torch.Tensor) -> torch.Tensor:
        objective = make_objective(self.objective, score_midpoint(model))
        with torch.no_grad():
            y = predict(model, x)
        grad = input_gradient(model, x, objective, y)
        delta = (x + self.alpha * grad.sign()).clamp(0.0, 1.0) - x
        delta = remove_dominant(delta, dominant_spectrum(x, self.keep))
        return x + variation_mask(x, self.mask_floor) * delta

    def extra_repr(self) -> str:
        return (
            f"eps={self.eps}, alpha={self.alpha}, keep={self.keep}, mask_floor={self.mask_floor}, "
            f"objective={self.objective!r}"
        )
