"""The score the gateway serves, as a differentiable module over whole canonical images.

The gateway scores an image as the mean of ``model.score`` over the deterministic evaluation crops
of its canonical resize (``training.preprocessing.eval_crops``). An advertiser perturbs the *file*,
i.e. the whole canonical image, so the acceptance gate attacks exactly that function:

* ``CropScorer.forward(x)``: x is float N×3×H×W canonical images in [0, 1]; the crops are cut at the
  origins of ``training.preprocessing.crop_origins`` (the same geometry as ``eval_crops``), every crop
  goes through the model's raw ``forward`` and the N×K outputs are averaged to (N,). Attacks
  differentiate this (the raw output, as ``training.gate.attacks`` expects).
* ``CropScorer.score(x)``: the served value, the mean of the *clamped* per-crop scores, numerically
  what ``training.engine.predict`` and the gateway compute.

``num_eval_crops`` overrides the model's crop count: 1 scores the center crop only (K = 1), which
makes every attack K times cheaper. It is then the served score of a one-crop deployment, not of
ours (5 crops); pixels outside the center crop do not influence it. The gate uses it for speed on
CPU (see training/configs/gate.yaml and docs/GATE.md).
"""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

from training.preprocessing import PreprocessConfig, crop_origins

__all__ = ["CropScorer"]


class CropScorer(nn.Module):
    """Mean model output over the evaluation crops of N×3×H×W canonical images (all of one size)."""

    def __init__(
        self, model: nn.Module, cfg: PreprocessConfig | None = None, num_eval_crops: int | None = None
    ) -> None:
        super().__init__()
        cfg = cfg or getattr(model, "preprocess_cfg", None) or PreprocessConfig()
        if num_eval_crops is not None:
            cfg = dataclasses.replace(cfg, num_eval_crops=int(num_eval_crops))
        self.model = model
        self.preprocess_cfg = cfg  # read by the attacks (L_mid's midpoint) and the R metric
        self.training = model.training  # mirror the wrapped model (a new Module starts in train mode)

    @property
    def num_crops(self) -> int:
        return self.preprocess_cfg.num_eval_crops

    def crops(self, x: torch.Tensor) -> torch.Tensor:
        """N×K×3×c×c crop stack of N×3×H×W images (differentiable slicing, no copy of geometry)."""
        if x.ndim != 4:
            raise ValueError("CropScorer expects N x 3 x H x W canonical images")
        c = self.preprocess_cfg.crop_size
        h, w = x.shape[-2:]
        if h < c or w < c:
            raise ValueError(f"image {h}x{w} is smaller than the crop {c}; resize it canonically first")
        origins = crop_origins(h, w, self.preprocess_cfg)
        return torch.stack([x[:, :, y : y + c, left : left + c] for y, left in origins], dim=1)

    def _per_crop(self, x: torch.Tensor, fn: nn.Module | object) -> torch.Tensor:
        stack = self.crops(x)
        n, k = stack.shape[:2]
        return fn(stack.flatten(0, 1)).reshape(n, k)  # type: ignore[operator]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Raw scores (N,): the mean of the model's raw output over the crops."""
        return self._per_crop(x, self.model).mean(1)

    def score(self, x: torch.Tensor) -> torch.Tensor:
        """Served scores (N,): the mean of the clamped per-crop scores (``model.score``)."""
        cfg = self.preprocess_cfg
        fn = getattr(self.model, "score", None)
        if fn is None:
            return self._per_crop(x, self.model).clamp(cfg.score_min, cfg.score_max).mean(1)
        return self._per_crop(x, fn).mean(1)
