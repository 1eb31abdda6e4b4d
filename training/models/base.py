"""The common IQA model interface: float NCHW RGB in [0, 1] in, one score per image out."""

from __future__ import annotations

import torch
from torch import nn

from training.preprocessing import PreprocessConfig

__all__ = ["IQAModel"]


class IQAModel(nn.Module):
    """Base class of every registered NR-IQA model.

    * ``forward(x)``: x is float32 N x 3 x H x W RGB in [0, 1]; returns the raw regression output (N,)
      on the score scale of ``preprocess_cfg`` (training, NT and attacks differentiate this).
    * ``score(x)``: ``forward`` clamped to [score_min, score_max]; this is what is exported and served.
    * Mean/std normalisation happens inside (``normalize``) so exported graphs take raw pixels.
    * ``preprocess_cfg`` is the one place the input size, crops, mean/std and score range live.
    """

    preprocess_cfg: PreprocessConfig

    def __init__(self, preprocess_cfg: PreprocessConfig | None = None) -> None:
        super().__init__()
        self.preprocess_cfg = preprocess_cfg or PreprocessConfig()
        mean = torch.tensor(self.preprocess_cfg.mean, dtype=torch.float32).view(1, 3, 1, 1)
        std = torch.tensor(self.preprocess_cfg.std, dtype=torch.float32).view(1, 3, 1, 1)
        self.register_buffer("mean", mean, persistent=False)
        self.register_buffer("std", std, persistent=False)

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def forward_head(self, feats: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(self.normalize(x)))

    def score(self, x: torch.Tensor) -> torch.Tensor:
        cfg = self.preprocess_cfg
        return self.forward(x).clamp(cfg.score_min, cfg.score_max)
