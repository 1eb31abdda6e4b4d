"""PGD (Madry et al.) on the raw IQA score: the adaptive white-box attack of the gate.

Threat model (white-box): ℓ∞ ball of radius ε (default 4/255; the benchmark grid is {2, 4, 8}/255)
around x, intersected with [0, 1], delivered as an 8-bit image. Uniform random start in the ε-ball,
then ``steps`` (default 10, ≥ 10 recommended) projected sign-gradient steps of α = 2.5·ε/steps.
Objective (maximized): L_mid (Eq. S20 of the NT supplement) by default, or MAE / MSE.
"""

from __future__ import annotations

from typing import ClassVar

import torch

from training.gate.attacks._registry import register_attack
from training.gate.attacks.base import seeded_generator
from training.gate.attacks.fgsm import IFGSM

__all__ = ["PGD"]


@register_attack
class PGD(IFGSM):
    """PGD (white-box). ℓ∞, ε = 4/255, 10 steps of α = 2.5·ε/steps, uniform random start,
    objective ``mid`` (L_mid) | ``mae`` | ``mse``. ``seed`` fixes the random start."""

    name: ClassVar[str] = "pgd"

    def __init__(
        self,
        eps: float = 4 / 255,
        steps: int = 10,
        alpha: float | None = None,
        objective: str = "mid",
        seed: int | None = 0,
    ) -> None:
        super().__init__(eps=eps, steps=steps, alpha=alpha, objective=objective)
        self.seed = seed

    def initial_point(self, x: torch.Tensor) -> torch.Tensor:
        assert self.eps is not None
        gen = seeded_generator(self.seed)
        noise = torch.rand(x.shape, generator=gen).mul_(2).sub_(1).mul_(self.eps)
        return x + noise.to(x.device)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", seed={self.seed}"
