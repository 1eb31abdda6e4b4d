"""Norm-regularization training (NT): the loss of Liu et al., Eq. 7, and the exact form of Eq. 5.

    L = L_IQA(f(x), y) + λ · mean_i |(f(x_i + h·d_i) − f(x_i)) / h|²,   d = sign(∇ₓ f(x))

(f(x + h·d) − f(x)) / h is a finite-difference estimate of ‖∇ₓf(x)‖₁ (Eq. 6), and the score change
under an ℓ∞ attack of size ε is ≈ ε·‖∇ₓf(x)‖₁ (Theorem 1, Eq. 3).

Cost notes (see bench/nt_overhead.py): d comes from one input-gradient pass over the *main* forward's
graph (``retain_graph=True``), so NT needs one extra forward (at x + h·d), not two. ``reg_fraction``
< 1 evaluates the finite difference on the first part of the batch only (an unbiased estimate of the
same mean with more variance), which cuts the extra forward/backward.

Precision: the difference quotient divides a score difference by h. Under float16 autocast a score
near 50 is stored in steps of 0.031, so at h = 0.01 the quotient would have a resolution of ~3, the
size of the norms being penalised. Both forwards of the regulariser therefore run in float32 with
autocast off (under autocast that costs one more forward, f(x) in float32); the main forward, the
IQA loss and the direction d = sign(∇ₓf) stay in the autocast dtype.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

__all__ = ["NTConfig", "NTOutput", "finite_difference_norm", "input_grad_l1", "nt_loss"]

Mode = Literal["fd", "exact"]


@dataclass(frozen=True)
class NTConfig:
    """λ (``lam``) = 0 is plain training (the baseline). ``h`` is in [0, 1] pixel units."""

    lam: float = 0.0
    h: float = 0.01
    mode: Mode = "fd"
    reg_fraction: float = 1.0

    def __post_init__(self) -> None:
        if self.lam < 0:
            raise ValueError("NT weight lam must be >= 0")
        if not 0.0 < self.h <= 1.0:
            raise ValueError("NT step h must be in (0, 1] (pixel space [0, 1])")
        if self.mode not in ("fd", "exact"):
            raise ValueError("NT mode must be 'fd' (Eq. 7) or 'exact' (Eq. 5)")
        if not 0.0 < self.reg_fraction <= 1.0:
            raise ValueError("reg_fraction must be in (0, 1]")

    @property
    def enabled(self) -> bool:
        return self.lam > 0


@dataclass
class NTOutput:
    loss: torch.Tensor  # total loss to backpropagate
    iqa_loss: torch.Tensor  # detached L_IQA
    reg: torch.Tensor  # detached regulariser value (mean squared norm estimate); 0 for the baseline
    pred: torch.Tensor  # detached predictions f(x)


def finite_difference_norm(
    model: nn.Module, x: torch.Tensor, pred: torch.Tensor, d: torch.Tensor, h: float
) -> torch.Tensor:
    """|(f(clamp(x + h·d)) − f(x)) / h| per sample: Eq. 6. Differentiable in the model's parameters
    through both f(x + h·d) and f(x) (``pred`` must be f(x) with its graph)."""
    x_pert = (x.detach().float() + h * d.float()).clamp_(0.0, 1.0)
    with _full_precision(x):
        return ((model(x_pert).float() - pred.float()) / h).abs()


def _autocast_on(x: torch.Tensor) -> bool:
    return torch.is_autocast_enabled(x.device.type)


def _full_precision(x: torch.Tensor) -> contextlib.AbstractContextManager[None]:
    """Autocast off on x's device (float32 math) inside the block; a no-op outside autocast."""
    if _autocast_on(x):
        return torch.autocast(x.device.type, enabled=False)
    return contextlib.nullcontext()


def input_grad_l1(model: nn.Module, x: torch.Tensor, create_graph: bool = False) -> torch.Tensor:
    """Exact ‖∇ₓ f(x)‖₁ per sample by autograd (Eq. 5's norm)."""
    x = x.detach().requires_grad_(True)
    pred = model(x)
    (g,) = torch.autograd.grad(pred.sum(), x, create_graph=create_graph)
    return g.abs().flatten(1).sum(1)


def nt_loss(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    criterion: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    cfg: NTConfig,
) -> NTOutput:
    """One NT objective evaluation. Call ``out.loss.backward()`` afterwards.

    x: float N×3×H×W in [0, 1]; y: N target scores. With ``cfg.lam == 0`` this is exactly
    ``criterion(model(x), y)`` (no extra passes), so λ = 0 reproduces plain training.
    """
    if not cfg.enabled:
        pred = model(x)
        iqa = criterion(pred, y)
        return NTOutput(iqa, iqa.detach(), torch.zeros((), device=x.device), pred.detach())

    x = x.detach().requires_grad_(True)
    pred = model(x)
    iqa = criterion(pred, y)
    n_reg = max(1, round(cfg.reg_fraction * x.shape[0]))

    if cfg.mode == "exact":
        if _autocast_on(x):
            with _full_precision(x):
                xr = x[:n_reg].float().detach().requires_grad_(True)
                (g,) = torch.autograd.grad(model(xr).sum(), xr, create_graph=True)
        else:
            (g,) = torch.autograd.grad(pred[:n_reg].sum(), x, create_graph=True)
            g = g[:n_reg]
        norm = g.abs().flatten(1).sum(1)
    else:
        # d = sign(∇ₓ f(x)) from the main forward's graph: no extra forward for the direction.
        (g,) = torch.autograd.grad(pred[:n_reg].sum(), x, retain_graph=True)
        d = torch.sign(g[:n_reg]).detach()
        base = pred[:n_reg]
        if _autocast_on(x):  # f(x) again in float32: both sides of the difference at full precision
            with _full_precision(x):
                base = model(x[:n_reg].detach().float())
        norm = finite_difference_norm(model, x[:n_reg], base, d, cfg.h)

    reg = norm.pow(2).mean()
    loss = iqa + cfg.lam * reg
    return NTOutput(loss, iqa.detach(), reg.detach(), pred.detach())
