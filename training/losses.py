"""The IQA loss: pseudo-MOS (or MOS) regression plus a pairwise ranking hinge (after RankIQA).

    L_IQA = L_reg(s, y) + w · mean_{(i, j) ∈ P} max(0, m − (s_i − s_j))

P holds the ordered pairs of one batch that must rank: i and j show the same reference (same
``group``) and i is the less damaged (``level_i < level_j``). The order of damage levels of one
reference needs no label, so it is supervision that is right by construction, where a pseudo-MOS
label is only a guess. With ``cross_gap`` > 0, pairs of *different* groups whose labels differ by at
least ``cross_gap`` points join P too, ordered by the label.

A ``group`` of −1 marks an image with no group (authentic photos, evaluation items): it joins no
within-group pair. A batch without pairs gives a ranking term of exactly 0.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

__all__ = ["REGRESSION_LOSSES", "IQALoss", "RankConfig", "ranking_hinge"]

REGRESSION_LOSSES = {"l1": nn.L1Loss, "mse": nn.MSELoss, "smooth_l1": nn.SmoothL1Loss}


@dataclass(frozen=True)
class RankConfig:
    """``weight`` 0 turns ranking off; ``margin`` and ``cross_gap`` are in score points."""

    weight: float = 0.0
    margin: float = 2.0
    group_size: int = 4
    cross_gap: float = 0.0

    def __post_init__(self) -> None:
        if self.weight < 0 or self.margin < 0 or self.cross_gap < 0:
            raise ValueError("rank.weight, rank.margin and rank.cross_gap must be >= 0")
        if self.group_size < 2:
            raise ValueError("rank.group_size must be at least 2 (a group ranks its members)")

    @property
    def enabled(self) -> bool:
        return self.weight > 0


def ranking_hinge(
    scores: torch.Tensor,
    group: torch.Tensor,
    level: torch.Tensor,
    margin: float,
    mos: torch.Tensor | None = None,
    cross_gap: float = 0.0,
) -> torch.Tensor:
    """Mean hinge over the batch's ordered pairs (0 when there are none). Differentiable in scores."""
    s = scores.float()
    better = s[:, None] - s[None, :]  # s_i − s_j
    same = (group[:, None] == group[None, :]) & (group[:, None] >= 0)
    pairs = same & (level[:, None] < level[None, :])
    if cross_gap > 0 and mos is not None:
        gap = mos[:, None].float() - mos[None, :].float()
        pairs = pairs | (~same & (gap >= cross_gap))
    if not bool(pairs.any()):
        return s.sum() * 0.0
    return torch.relu(margin - better[pairs]).mean()


class IQALoss(nn.Module):
    """Regression on the label plus ``rank.weight`` × the ranking hinge; ``forward(pred, y, group,
    level)``. Without group/level (or with ranking off) it is the regression loss alone."""

    def __init__(self, regression: str = "l1", rank: RankConfig | None = None) -> None:
        super().__init__()
        if regression not in REGRESSION_LOSSES:
            raise ValueError(f"optim.loss must be one of {sorted(REGRESSION_LOSSES)}")
        self.regression = REGRESSION_LOSSES[regression]()
        self.rank = rank or RankConfig()

    def forward(
        self,
        pred: torch.Tensor,
        target: torch.Tensor,
        group: torch.Tensor | None = None,
        level: torch.Tensor | None = None,
    ) -> torch.Tensor:
        loss = self.regression(pred.float(), target.float())
        if self.rank.enabled and group is not None and level is not None:
            hinge = ranking_hinge(pred, group, level, self.rank.margin, target, self.rank.cross_gap)
            loss = loss + self.rank.weight * hinge
        return loss
