"""Attack objectives (to be maximized) of the NT paper's supplement, Eq. S20-S22.

Each objective maps (f(x'), y) to a per-sample value, where f(x') is the raw prediction on the
candidate and y the *clean* prediction f(x) (the paper takes the model's own clean score as the label):

* ``mid``  (L_mid, Eq. S20): +f(x') if y ≤ mid else −f(x'): low-score images are pushed up, high-score
  images down, mid = 50 on the [0, 100] scale (the midpoint of the model's score range).
* ``mae``  (Eq. S21): |f(x') − y|.
* ``mse``  (Eq. S22): (f(x') − y)².

MAE and MSE have zero gradient at x' = x (|·| has subgradient 0 at 0 in autograd, and (f − y)² is
flat there), so a one-step attack started at x does not move with them; this is the weakness the
paper reports in Table S6.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import torch

__all__ = ["OBJECTIVES", "Objective", "check_objective", "l_mae", "l_mid", "l_mse", "make_objective"]

Objective = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def l_mid(pred: torch.Tensor, y: torch.Tensor, mid: float = 50.0) -> torch.Tensor:
    """Eq. S20: f(x') where y ≤ mid, −f(x') where y > mid."""
    return torch.where(y <= mid, pred, -pred)


def l_mae(pred: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Eq. S21: |f(x') − y|."""
    return (pred - y).abs()


def l_mse(pred: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Eq. S22: (f(x') − y)²."""
    return (pred - y).pow(2)


OBJECTIVES: dict[str, Callable[..., torch.Tensor]] = {"mid": l_mid, "mae": l_mae, "mse": l_mse}


def make_objective(name: str, mid: float = 50.0) -> Objective:
    """The objective called ``name`` (``mid``, ``mae`` or ``mse``); ``mid`` is L_mid's switch point."""
    if name not in OBJECTIVES:
        raise ValueError(f"unknown objective {name!r}; available: {', '.join(sorted(OBJECTIVES))}")
    if name == "mid":
        return partial(l_mid, mid=mid)
    return OBJECTIVES[name]


def check_objective(name: str) -> str:
    """Validate an objective name at attack construction time."""
    if name not in OBJECTIVES:
        raise ValueError(f"unknown objective {name!r}; available: {', '.join(sorted(OBJECTIVES))}")
    return name
