"""Korhonen & You (QoEVMA 2022) style attack: gradient steps masked to textured regions.

Threat model (black-box transfer by default): the input gradient is computed on a *surrogate* model
and the perturbation is applied to the target, which is never queried (pass ``surrogate=None`` for the
white-box variant that differentiates the target itself). ℓ∞ ball of radius ε (default 4/255: the
masked steps concentrate the change in textured regions, where 4 levels are not visible), [0, 1],
8-bit delivery. Objective (maximized on the surrogate): L_mid (Eq. S20) by default, or MAE / MSE,
with y the surrogate's clean prediction.

Texture mask: Sobel gradient magnitude of the clean image's luma, smoothed by a 3×3 box filter and
normalised per image to [0, 1] (divided by its maximum), so flat regions barely move and edges/texture
take full steps. Update: x ← Π_ε(x + lr·ε·mask·sign(∇ₓL)). Table S7's "learning rate 0.2" is taken
as the step size as a fraction of ε (lr = 0.2: five full-mask steps reach the boundary); 10 steps.
"""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from training.gate.attacks._registry import register_attack
from training.gate.attacks.base import Attack, score_midpoint, sign_ascent
from training.gate.attacks.objectives import check_objective, make_objective
from training.gate.tensors import eval_mode, model_device, predict

__all__ = ["Korhonen", "texture_mask"]

_LUMA = (0.299, 0.587, 0.114)


def texture_mask(x: torch.Tensor) -> torch.Tensor:
    """N×1×H×W map in [0, 1]: box-smoothed Sobel magnitude of the luma, divided by its per-image max."""
    luma = (x * x.new_tensor(_LUMA).view(1, 3, 1, 1)).sum(1, keepdim=True)
    kx = x.new_tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]]).view(1, 1, 3, 3)
    padded = F.pad(luma, (1, 1, 1, 1), mode="replicate")
    gx = F.conv2d(padded, kx)
    gy = F.conv2d(padded, kx.transpose(-1, -2))
    magnitude = torch.sqrt(gx.pow(2) + gy.pow(2))
    magnitude = F.avg_pool2d(F.pad(magnitude, (1, 1, 1, 1), mode="replicate"), 3, stride=1)
    peak = magnitude.flatten(1).amax(1).clamp_min(1e-12).view(-1, 1, 1, 1)
    return magnitude / peak


@register_attack
class Korhonen(Attack):
    """Korhonen-style attack (black-box transfer from ``surrogate``; white-box if None). ℓ∞,
    ε = 4/255, ``steps`` = 10 masked sign steps of lr·ε (lr = 0.2, Table S7), objective ``mid``."""

    name: ClassVar[str] = "korhonen"
    needs_surrogate: ClassVar[bool] = True

    def __init__(
        self,
        surrogate: nn.Module | None = None,
        eps: float = 4 / 255,
        lr: float = 0.2,
        steps: int = 10,
        objective: str = "mid",
    ) -> None:
        super().__init__(eps)
        if lr <= 0 or steps < 1:
            raise ValueError("lr must be > 0 and steps >= 1")
        self.surrogate = surrogate
        self.lr = float(lr)
        self.steps = int(steps)
        self.objective = check_objective(objective)

    def perturb(self, model: nn.Module, x: torch.Tensor) -> torch.Tensor:
        assert self.eps is not None
        source = self.surrogate if self.surrogate is not None else model
        with eval_mode(source):
            xs = x.to(model_device(source))
            objective = make_objective(self.objective, score_midpoint(source))
            with torch.no_grad():
                y = predict(source, xs)
            x_adv = sign_ascent(
                source, xs, objective, y, self.eps, self.lr * self.eps, self.steps, mask=texture_mask(xs)
            )
        return x_adv.to(x.device)

    def extra_repr(self) -> str:
        transfer = "surrogate" if self.surrogate is not None else "white-box"
        return f"eps={self.eps}, lr={self.lr}, steps={self.steps}, objective={self.objective!r}, {transfer}"
