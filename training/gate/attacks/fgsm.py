"""FGSM and I-FGSM on the raw IQA score (NT paper, supplement Eq. S18-S22, Table S7).

Threat model (white-box): ℓ∞ ball of radius ε around x, intersected with [0, 1], delivered as an
8-bit image. Objective (maximized): L_mid by default (Eq. S20), or MAE / MSE against the clean
prediction (Eq. S21-S22).

* ``fgsm``: one step x + α·sign(∇ₓL) projected onto the ε-ball; Table S7: ε = 0.005, α = 0.01
  (α > ε, so the step is clipped to ε·sign(∇ₓL)). On the 8-bit grid ε = 0.005 is a 1/255 step.
* ``ifgsm``: K steps of size α, each projected onto the ε-ball and [0, 1] (Eq. S19); α defaults to
  2.5·ε/K (the Madry et al. rule, so the iterate can reach the boundary and move along it).

``fgsm_step`` is FGSM's one step and ``fgsm_probe`` the whole delivered attack with its scores (clean,
adversarial, perturbation): the gateway's online probe is ``fgsm_probe`` traced into an ONNX graph
(export/probe_export.py), so the gate and the probe run the same code. The step takes one forward
pass: at x' = x the clean prediction y = f(x) is the output of the forward the gradient goes through.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import nn

from training.gate.attacks._registry import register_attack
from training.gate.attacks.base import (
    Attack,
    project_linf,
    quantize_in_ball,
    score_midpoint,
    served_scores,
    sign_ascent,
)
from training.gate.attacks.objectives import Objective, check_objective, make_objective
from training.gate.attacks.quality import adversarial_quality, score_images
from training.gate.tensors import predict

__all__ = ["FGSM", "IFGSM", "fgsm_gradient", "fgsm_probe", "fgsm_step", "intensity_sweep"]

# FGSM's parameters (NT paper, Table S7); the gate's FGSM row and the gateway's probe both use them.
FGSM_EPS = 0.005
FGSM_ALPHA = 0.01


@register_attack
class IFGSM(Attack):
    """I-FGSM (white-box). ℓ∞, ε = 0.005 (default), K = ``steps`` = 10 steps of α = 2.5·ε/K,
    objective ``mid`` (L_mid) | ``mae`` | ``mse``, no random start."""

    name: ClassVar[str] = "ifgsm"

    def __init__(
        self, eps: float = 0.005, steps: int = 10, alpha: float | None = None, objective: str = "mid"
    ) -> None:
        super().__init__(eps)
        if steps < 1:
            raise ValueError("steps must be >= 1")
        self.steps = int(steps)
        self.alpha = float(alpha) if alpha is not None else 2.5 * eps / self.steps
        if self.alpha <= 0:
            raise ValueError("alpha must be > 0")
        self.objective = check_objective(objective)

    def initial_point(self, x: torch.Tensor) -> torch.Tensor | None:
        """Starting point of the ascent (None: x itself). PGD overrides this with a random start."""
        return None

    def perturb(self, model: nn.Module, x: torch.Tensor) -> torch.Tensor:
        assert self.eps is not None
        objective = make_objective(self.objective, score_midpoint(model))
        with torch.no_grad():
            y = predict(model, x)
        return sign_ascent(
            model, x, objective, y, self.eps, self.alpha, self.steps, x_init=self.initial_point(x)
        )

    def extra_repr(self) -> str:
        return f"eps={self.eps}, steps={self.steps}, alpha={self.alpha}, objective={self.objective!r}"


@register_attack
class FGSM(IFGSM):
    """FGSM (white-box). ℓ∞, ε = 0.005, one step of α = 0.01 clipped to the ε-ball (Table S7),
    objective ``mid`` (L_mid, Eq. S20) | ``mae`` | ``mse``."""

    name: ClassVar[str] = "fgsm"

    def __init__(self, eps: float = FGSM_EPS, alpha: float = FGSM_ALPHA, objective: str = "mid") -> None:
        super().__init__(eps=eps, steps=1, alpha=alpha, objective=objective)

    def perturb(self, model: nn.Module, x: torch.Tensor) -> torch.Tensor:
        assert self.eps is not None
        objective = make_objective(self.objective, score_midpoint(model))
        return fgsm_step(model, x, objective, self.eps, self.alpha)[1]


def fgsm_gradient(
    model: nn.Module, x: torch.Tensor, objective: Objective
) -> tuple[torch.Tensor, torch.Tensor]:
    """(y, ∇ₓ objective(f(x), y)) with y = f(x) the raw clean prediction (N,), detached: one forward
    pass serves both (the label of the objective is the prediction at the point the gradient is
    taken, as in ``sign_ascent``'s first step)."""
    with torch.enable_grad():
        x_in = x.detach().requires_grad_(True)
        pred = predict(model, x_in)
        y = pred.detach()
        (grad,) = torch.autograd.grad(objective(pred, y).sum(), x_in)
    return y, grad


def _step(x: torch.Tensor, grad: torch.Tensor, eps: float, alpha: float) -> torch.Tensor:
    return project_linf(x + alpha * grad.sign(), x, eps)


def fgsm_step(
    model: nn.Module, x: torch.Tensor, objective: Objective, eps: float, alpha: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """One FGSM step from x: (y, Π_ε(x + α·sign ∇ₓ objective(f(x), y))), y and the gradient from
    ``fgsm_gradient``; the result is continuous (``Attack.deliver`` / ``fgsm_probe`` put it on the
    8-bit grid)."""
    y, grad = fgsm_gradient(model, x, objective)
    return y, _step(x, grad, eps, alpha)


def fgsm_probe(
    model: nn.Module,
    x: torch.Tensor,
    eps: float = FGSM_EPS,
    alpha: float = FGSM_ALPHA,
    objective: str = "mid",
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The gate's FGSM on ``x`` (float N×3×H×W in [0, 1] on the model's device, model in eval mode)
    with its scores: (clean served score (N,), served score of the delivered FGSM image (N,),
    perturbation x_adv − x (N×3×H×W, on the 8-bit grid within ±ε), ‖∇ₓ objective‖₁ per image (N,),
    the gradient the step follows, in score units per unit of [0, 1] pixel value).

    Equals ``FGSM(eps, alpha, objective)(model, x)`` (test_probe_export.py checks it) without
    ``validate_images``' data-dependent checks, so ``make_fx`` can trace it with a symbolic batch.
    The gradient's ℓ1 norm gives the step's first-order prediction |Δ| ≈ ‖∇‖₁/255 on the 8-bit grid
    (docs/PROBE.md: the gateway's linearity statistic)."""
    cfg = getattr(model, "preprocess_cfg", None)
    objective_fn = make_objective(check_objective(objective), score_midpoint(model))
    y, grad = fgsm_gradient(model, x, objective_fn)
    x_adv = quantize_in_ball(_step(x, grad, eps, alpha), x, eps)
    clean = y.clamp(float(cfg.score_min), float(cfg.score_max)) if cfg is not None else y
    with torch.no_grad():
        adv = served_scores(model, x_adv)
    return clean, adv, x_adv - x, grad.abs().flatten(1).sum(1)


def intensity_sweep(
    model: nn.Module,
    x: torch.Tensor,
    eps_list: list[float],
    iters_list: list[int],
    objective: str = "mid",
) -> list[dict[str, Any]]:
    """Attack intensity vs. robustness (NT paper, Sec. 5.4 / Fig. 6): I-FGSM for every (ε, K).

    Returns one dict per pair: ``eps``, ``iters``, ``mean_abs_delta`` (mean |f(x_adv) − f(x)| on the
    served, clamped score) and ``mean_ssim`` (the paper quantifies intensity by SSIM).
    """
    clean = score_images(model, x)
    rows: list[dict[str, Any]] = []
    for eps in eps_list:
        for iters in iters_list:
            x_adv = IFGSM(eps=eps, steps=iters, objective=objective)(model, x)
            adv = score_images(model, x_adv)
            quality = adversarial_quality(x.to(x_adv.device), x_adv)
            rows.append(
                {
                    "eps": float(eps),
                    "iters": int(iters),
                    "mean_abs_delta": float((adv - clean).abs().mean()),
                    "mean_ssim": float(quality["ssim"].mean()),
                }
            )
    return rows
