"""Constants, helpers and the probe model shared by the attack tests (their fixtures: tests/conftest.py)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from training.gate.attacks import (
    score_images,
)
from training.gate.attacks.base import quantize_8bit, quantize_in_ball
from training.preprocessing import PreprocessConfig

ALL_ATTACKS = {"fgsm", "ifgsm", "pgd", "perceptual", "uap", "korhonen", "square", "ioi", "ranking"}
EPS = {
    "fgsm": 0.005, "ifgsm": 0.005, "pgd": 4 / 255, "korhonen": 4 / 255, "square": 4 / 255, "uap": 0.04,
    "ioi": 4 / 255, "ranking": 4 / 255,
}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def sign_noise(x: torch.Tensor, eps: float, seed: int = 0) -> torch.Tensor:
    """Random ±eps per pixel, delivered like an attack (8 bits, inside the ε-ball)."""
    gen = torch.Generator().manual_seed(seed)
    signs = torch.randint(0, 2, x.shape, generator=gen).float() * 2 - 1
    return quantize_in_ball(x + eps * signs, x, eps)


def sign_permuted(x: torch.Tensor, x_adv: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """The attack's own per-pixel magnitudes with random signs: same ℓ∞, ℓ1, ℓ2 and spatial layout."""
    gen = torch.Generator().manual_seed(seed)
    signs = torch.randint(0, 2, x.shape, generator=gen).float() * 2 - 1
    return quantize_8bit(x + (x_adv - x).abs() * signs)


def deltas(model: nn.Module, x: torch.Tensor, x_adv: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(Δscore, L_mid gain): the gain is +Δ for clean scores ≤ 50 and −Δ above (Eq. S20)."""
    clean = score_images(model, x)
    delta = score_images(model, x_adv) - clean
    return delta, torch.where(clean <= 50, delta, -delta)


def assert_delivered(x: torch.Tensor, x_adv: torch.Tensor, eps: float | None) -> None:
    """x_adv in [0, 1], on the 8-bit grid and (if eps) inside the ℓ∞ ball."""
    assert x_adv.shape == x.shape
    assert float(x_adv.min()) >= 0.0 and float(x_adv.max()) <= 1.0
    levels = x_adv * 255
    assert torch.allclose(levels, levels.round(), atol=1e-4)
    if eps is not None:
        assert float((x_adv - x).abs().max()) <= eps + 1e-6


class Probe(nn.Module):
    """Wraps a model; records train/eval mode, grad mode and (``keep_inputs``) the input of every
    forward: the iterates an attack evaluates."""

    def __init__(self, inner: nn.Module, keep_inputs: bool = False) -> None:
        super().__init__()
        self.inner = inner
        self.preprocess_cfg = inner.preprocess_cfg
        self.keep_inputs = keep_inputs
        self.calls = 0
        self.training_seen: list[bool] = []
        self.grad_enabled: list[bool] = []
        self.inputs: list[torch.Tensor] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        self.training_seen.append(self.training)
        self.grad_enabled.append(torch.is_grad_enabled())
        if self.keep_inputs:
            self.inputs.append(x.detach().clone())
        return self.inner(x)

    @property
    def gradient_inputs(self) -> list[torch.Tensor]:
        """The inputs of the forwards run with gradients enabled (one per gradient step)."""
        return [x for x, grad in zip(self.inputs, self.grad_enabled, strict=True) if grad]

    def score(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward(x).clamp(0.0, 100.0)


class PatternModel(nn.Module):
    """An analytic model: raw = bias + gain·mean(w·x) over a fixed pattern w (±1 by default, or
    ``pattern``), no ``score`` method (a plain module); ``score_range`` goes to its preprocess_cfg.
    Its gradient is gain·w/numel, known exactly, and it needs no training, so tests of an attack's
    arithmetic run in milliseconds."""

    def __init__(
        self,
        bias: float = 50.0,
        gain: float = 100.0,
        size: int = 16,
        seed: int = 5,
        pattern: torch.Tensor | None = None,
        score_range: tuple[float, float] = (0.0, 100.0),
    ) -> None:
        super().__init__()
        self.preprocess_cfg = PreprocessConfig(score_min=score_range[0], score_max=score_range[1])
        if pattern is None:
            gen = torch.Generator().manual_seed(seed)
            pattern = (torch.randint(0, 2, (1, 3, size, size), generator=gen) * 2 - 1).float()
        self.register_buffer("w", pattern)
        self.bias, self.gain = bias, gain

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bias + self.gain * (x * self.w).mean((1, 2, 3))


class PatternScorer(PatternModel):
    """``PatternModel`` with the served score: ``score`` clamps the raw output to [0, 100]."""

    def score(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward(x).clamp(0.0, 100.0)


def grid_images(n: int, size: int = 16, seed: int = 0, low: int = 40, high: int = 216) -> torch.Tensor:
    """n random images on the 8-bit grid with every level in [low, high] / 255 (off the box edges)."""
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(low, high + 1, (n, 3, size, size), generator=gen).float() / 255
