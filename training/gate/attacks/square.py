"""Square attack (Andriushchenko et al., ECCV 2020), ℓ∞ version, adapted to IQA regression.

Threat model (black-box, score-only): the attacker only queries the served score, ``model.score``
(clamped to the score range, as the gateway returns it; ``served_scores``), never the raw output, with
no gradients (every query under ``torch.no_grad``); ℓ∞ ball of radius ε = 4/255 around x, [0, 1], 8-bit
delivery; a budget of ``n_queries`` model evaluations per image (default 200), counting the query for
the clean score and the one for the initial point. Objective (maximized): L_mid (Eq. S20) by default,
or MAE / MSE, with y the clean served score. A candidate is kept only if the objective of its *served*
score strictly improves, so where the clamp saturates (raw output beyond the range) no step is taken.

Random search: start from vertical stripes (each column and channel gets ±ε); then each iteration
picks, per image, a random s×s window and sets it to a fresh ±ε per channel; the candidate is kept
only if the objective improves. The window area follows the paper's piecewise-constant schedule
p(i) (p_init halved at 10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000 of 10 000 iterations, rescaled to
the budget), s = round(√(p·H·W)).
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import nn

from training.gate.attacks._registry import register_attack
from training.gate.attacks.base import Attack, score_midpoint, seeded_generator, served_scores
from training.gate.attacks.objectives import check_objective, make_objective

__all__ = ["SquareAttack", "square_fraction"]

# (iteration bound out of 10 000, divisor of p_init up to that bound); 512 after the last bound.
_SCHEDULE = (
    (10, 1),
    (50, 2),
    (200, 4),
    (500, 8),
    (1000, 16),
    (2000, 32),
    (4000, 64),
    (6000, 128),
    (8000, 256),
)


def square_fraction(p_init: float, iteration: int, n_iters: int) -> float:
    """Fraction p of the image area changed at ``iteration`` of ``n_iters`` (schedule of the paper)."""
    it = int(iteration / max(n_iters, 1) * 10000)
    divisor = 512
    for bound, div in _SCHEDULE:
        if it <= bound:
            divisor = div
            break
    return p_init / divisor


@register_attack
class SquareAttack(Attack):
    """Square attack (black-box, score queries only). ℓ∞, ε = 4/255, ``n_queries`` = 200 per image,
    p_init = 0.05, objective ``mid`` (L_mid) | ``mae`` | ``mse``. ``seed`` fixes the search."""

    name: ClassVar[str] = "square"

    def __init__(
        self,
        eps: float = 4 / 255,
        n_queries: int = 200,
        p_init: float = 0.05,
        objective: str = "mid",
        seed: int | None = 0,
    ) -> None:
        super().__init__(eps)
        if n_queries < 2:
            raise ValueError("n_queries must be >= 2 (clean score + initial point)")
        if not 0.0 < p_init <= 1.0:
            raise ValueError("p_init must be in (0, 1]")
        self.n_queries = int(n_queries)
        self.p_init = float(p_init)
        self.objective = check_objective(objective)
        self.seed = seed

    def _signs(self, shape: tuple[int, ...], gen: torch.Generator, device: torch.device) -> torch.Tensor:
        return (torch.randint(0, 2, shape, generator=gen) * 2 - 1).to(device, torch.float32)

    @torch.no_grad()
    def perturb(self, model: nn.Module, x: torch.Tensor) -> torch.Tensor:
        assert self.eps is not None
        eps = self.eps
        n, c, h, w = x.shape
        gen = seeded_generator(self.seed)
        objective = make_objective(self.objective, score_midpoint(model))
        y = served_scores(model, x)

        delta = eps * self._signs((n, c, 1, w), gen, x.device).expand(n, c, h, w).clone()
        best = objective(served_scores(model, (x + delta).clamp(0.0, 1.0)), y)
        rows = torch.arange(h, device=x.device).view(1, h)
        cols = torch.arange(w, device=x.device).view(1, w)
        n_iters = self.n_queries - 2
        for i in range(n_iters):
            s = round((square_fraction(self.p_init, i, n_iters) * h * w) ** 0.5)
            s = max(1, min(s, h - 1, w - 1))
            top = torch.randint(0, h - s + 1, (n, 1), generator=gen).to(x.device)
            left = torch.randint(0, w - s + 1, (n, 1), generator=gen).to(x.device)
            in_rows = (rows >= top) & (rows < top + s)
            in_cols = (cols >= left) & (cols < left + s)
            window = (in_rows.view(n, 1, h, 1) & in_cols.view(n, 1, 1, w)).expand(n, c, h, w)
            values = eps * self._signs((n, c, 1, 1), gen, x.device)
            candidate = torch.where(window, values.expand(n, c, h, w), delta)
            # A window that already holds these values would waste the query: flip one channel.
            unchanged = (candidate != delta).flatten(1).sum(1) == 0
            if bool(unchanged.any()):
                channel = torch.randint(0, c, (n,), generator=gen).to(x.device)
                hit = torch.arange(c, device=x.device).view(1, c) == channel.view(n, 1)
                flip = unchanged.view(n, 1) & hit
                values = torch.where(flip.view(n, c, 1, 1), -values, values)
                candidate = torch.where(window, values.expand(n, c, h, w), delta)
            loss = objective(served_scores(model, (x + candidate).clamp(0.0, 1.0)), y)
            better = loss > best
            delta = torch.where(better.view(n, 1, 1, 1), candidate, delta)
            best = torch.where(better, loss, best)
        return (x + delta).clamp(0.0, 1.0)

    def extra_repr(self) -> str:
        return (
            f"eps={self.eps}, n_queries={self.n_queries}, p_init={self.p_init}, objective={self.objective!r}"
        )
