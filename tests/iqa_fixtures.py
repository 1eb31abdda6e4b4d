"""A tiny trained NR-IQA model and synthetic images for attack / metric tests (CPU, seconds).

Task: random colour patterns with sharp edges (quality 100) degraded by additive Gaussian noise of a
random level t ∈ [0, 1]; label = 100 − 80·t. The noise energy is what the model must measure, so its
score genuinely depends on the pixels (and attacks have something to exploit). (Blur was tried as a
second degradation; the tiny network cannot separate it from content in a few seconds of training.)
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import nn

from training.models.base import IQAModel

__all__ = ["TinyIQA", "degrade", "degraded_test_set", "small_trained_model", "synthetic_images"]


def synthetic_images(n: int, size: int = 64, seed: int = 0) -> torch.Tensor:
    """n random RGB patterns (smooth colour fields plus sharp-edged rectangles): float32
    n×3×size×size in [0, 1] on the 8-bit grid."""
    gen = torch.Generator().manual_seed(seed)
    img = torch.zeros(n, 3, size, size)
    for cells, weight in ((2, 1.0), (4, 0.6), (8, 0.35), (16, 0.2)):
        coarse = torch.randn(n, 3, cells, cells, generator=gen)
        img += weight * F.interpolate(coarse, size=(size, size), mode="bicubic", align_corners=False)
    # Sharp-edged rectangles give the images edges that blur visibly removes.
    grid = torch.arange(size).view(1, size)
    for _ in range(6):
        corners = torch.randint(0, size, (n, 4), generator=gen)
        top, bottom = corners[:, 0:2].amin(1, keepdim=True), corners[:, 0:2].amax(1, keepdim=True)
        left, right = corners[:, 2:4].amin(1, keepdim=True), corners[:, 2:4].amax(1, keepdim=True)
        rows = (grid >= top) & (grid <= bottom)
        cols = (grid >= left) & (grid <= right)
        rect = (rows.view(n, 1, size, 1) & cols.view(n, 1, 1, size)).float()
        img += 1.5 * rect * torch.randn(n, 3, 1, 1, generator=gen)
    lo = img.flatten(1).amin(1).view(n, 1, 1, 1)
    hi = img.flatten(1).amax(1).view(n, 1, 1, 1)
    contrast = 0.5 + 0.5 * torch.rand(n, 1, 1, 1, generator=gen)
    offset = (1 - contrast) * torch.rand(n, 1, 1, 1, generator=gen)
    img = offset + contrast * (img - lo) / (hi - lo)
    return torch.round(img.clamp(0, 1) * 255) / 255


def degrade(x: torch.Tensor, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Additive Gaussian noise of σ = 0.15·t, t ~ U[0, 1]; returns (8-bit images, label 100 − 80·t)."""
    n = x.shape[0]
    level = torch.rand(n, generator=gen)
    noisy = x + 0.15 * level.view(n, 1, 1, 1) * torch.randn(x.shape, generator=gen)
    return torch.round(noisy.clamp(0, 1) * 255) / 255, 100.0 - 80.0 * level


class TinyIQA(IQAModel):
    """Three stride-2 convs + global average pool + linear head; raw output on the [0, 100] scale."""

    def __init__(self, width: int = 16) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, width, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.Conv2d(width, 2 * width, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.Conv2d(2 * width, 2 * width, 3, stride=2, padding=1),
            nn.ReLU(),
        )
        self.head = nn.Linear(2 * width, 1)
        nn.init.constant_(self.head.bias, 50.0)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x).mean(dim=(2, 3))

    def forward_head(self, feats: torch.Tensor) -> torch.Tensor:
        return self.head(feats).squeeze(1)


@functools.lru_cache(maxsize=4)
def small_trained_model(seed: int = 0, steps: int = 600, size: int = 32, lr: float = 6e-3) -> TinyIQA:
    """TinyIQA trained for ``steps`` Adam steps (batch 32 of size×size crops) on the synthetic noise
    task, cached per argument set; ~5-10 s on one CPU thread. Held-out SROCC ≈ 0.99, and two seeds
    learn similar enough functions for transfer attacks to carry over. Returned in eval mode; the
    object is shared, so callers that change its mode must put it back."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = TinyIQA()
    gen = torch.Generator().manual_seed(1000 + seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny convs: one thread is as fast and not hurt by a busy machine
    try:
        model.train()
        for step in range(steps):
            clean = synthetic_images(32, size=size, seed=10_000 * (seed + 1) + step)
            x, y = degrade(clean, gen)
            loss = F.smooth_l1_loss(model(x), y, beta=5.0)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    finally:
        torch.set_num_threads(threads)
    model.eval()
    for p in model.parameters():
        p.grad = None
    return model


def degraded_test_set(n: int = 32, size: int = 64, seed: int = 123) -> tuple[torch.Tensor, torch.Tensor]:
    """Held-out degraded images and their labels (8-bit grid)."""
    gen = torch.Generator().manual_seed(seed)
    return degrade(synthetic_images(n, size, seed), gen)
