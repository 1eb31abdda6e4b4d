"""FGSM's one step and ``fgsm_probe`` (the function the gateway's online probe traces), value by value
on analytic models: the probe is the gate's delivered FGSM with its served scores. The traced ONNX
graph itself: tests/test_probe_export.py."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from tests.attacks.attack_fixtures import PatternModel, PatternScorer, grid_images
from training.gate.attacks.fgsm import FGSM, fgsm_gradient, fgsm_probe, fgsm_step
from training.gate.attacks.objectives import make_objective

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_fgsm_step_is_one_projected_sign_step_from_the_clean_prediction() -> None:
    pattern = torch.randint(-1, 2, (1, 3, 16, 16), generator=torch.Generator().manual_seed(1)).float()
    model = PatternModel(bias=20.0, gain=100.0, pattern=pattern)
    x = grid_images(3, seed=2)
    x[0, :, :2] = 1.0  # at the top of the box: steps up are cut there
    y, x_step = fgsm_step(model, x, make_objective("mid"), 2 / 255, 0.01)
    with torch.no_grad():
        assert torch.equal(y, model(x)) and not y.requires_grad
    direction = torch.where(y <= 50, 1.0, -1.0).view(-1, 1, 1, 1) * pattern  # L_mid pushes low scores up
    assert torch.allclose(x_step, (x + 2 / 255 * direction).clamp(0, 1), atol=1e-7)


def test_fgsm_gradient_is_one_forward_and_the_step_follows_its_sign_within_eps() -> None:
    """fgsm_gradient: the clean prediction and ∇ L_mid (gain·w/numel, signed by the side of the
    midpoint); fgsm_step: x + α·sign(∇) clipped to the ε-ball (α > ε) and to [0, 1]."""
    pattern = torch.randint(-1, 2, (1, 3, 16, 16), generator=torch.Generator().manual_seed(3)).float()
    model = PatternModel(bias=50.0, gain=100.0, pattern=pattern)
    x = torch.stack([0.5 - 0.2 * pattern[0], 0.5 + 0.2 * pattern[0]])  # scores below / above 50
    y, grad = fgsm_gradient(model, x, make_objective("mid"))
    with torch.no_grad():
        assert torch.equal(y, model(x))
    side = torch.where(y <= 50, 1.0, -1.0).view(-1, 1, 1, 1)
    assert side.flatten().tolist() == [1.0, -1.0]
    assert torch.allclose(grad, side * 100.0 * pattern / pattern[0].numel())
    _, x_step = fgsm_step(model, x, make_objective("mid"), 1 / 255, 0.01)
    assert torch.allclose(x_step, (x + side * pattern / 255).clamp(0, 1), atol=1e-7)
    assert float((x_step - x).abs().max()) == pytest.approx(1 / 255, abs=1e-7)


def test_fgsm_probe_is_the_delivered_fgsm_with_its_served_scores() -> None:
    model = PatternScorer(bias=45.0, gain=300.0)
    x = grid_images(4, seed=3)
    clean, adv, delta, grad_l1 = fgsm_probe(model, x)
    delivered = FGSM()(model, x)
    assert torch.equal(delta, delivered - x)
    assert torch.allclose(grad_l1, torch.full((4,), 300.0))  # ∇ = gain·w/numel with |w| = 1: ‖∇‖₁ = gain
    with torch.no_grad():
        assert torch.allclose(clean, model.score(x)) and torch.allclose(adv, model.score(delivered))
    eps = 2.6 / 255  # not a whole number of levels: plain rounding of x ± ε would leave the ball
    strong = fgsm_probe(model, x, eps=eps, alpha=0.02, objective="mae")
    assert torch.equal(strong[2], FGSM(eps=eps, alpha=0.02, objective="mae")(model, x) - x)
    assert float(strong[2].abs().max()) <= eps
    with pytest.raises(ValueError, match="objective"):
        fgsm_probe(model, x, objective="hinge")


def test_fgsm_probe_clean_score_is_clamped_to_the_models_range_and_its_midpoint_is_used() -> None:
    x = grid_images(2, seed=4)
    above = PatternScorer(bias=130.0)
    clean, adv, *_ = fgsm_probe(above, x)
    assert clean.tolist() == [100.0, 100.0] and adv.tolist() == [100.0, 100.0]
    clean, adv, *_ = fgsm_probe(PatternScorer(bias=-30.0), x)
    assert clean.tolist() == [0.0, 0.0] and adv.tolist() == [0.0, 0.0]
    tenths = PatternScorer(bias=0.0, gain=10.0, pattern=torch.ones(1, 3, 16, 16), score_range=(0.0, 10.0))
    x = torch.full((2, 3, 16, 16), 0.3)
    x[1] = 0.7  # scores 3 and 7: pushed up and down around the midpoint 5
    clean, _, delta, _ = fgsm_probe(tenths, x)
    assert clean.tolist() == pytest.approx([3.0, 7.0])
    assert float(delta[0].min()) > 0 and float(delta[1].max()) < 0

    class Bare(nn.Module):  # no preprocess_cfg, no score: the raw output is served
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return 300.0 * x.flatten(1).mean(1) - 20.0

    clean, adv, delta, _ = fgsm_probe(Bare(), x)
    assert clean.tolist() == pytest.approx([70.0, 190.0])
    assert torch.allclose(adv, Bare()(x + delta))


def test_fgsm_switches_l_mid_at_the_models_own_midpoint() -> None:
    """On [0, 10] the switch is 5: a score of 7 is pushed down (at the default 50 it would go up)."""
    tenths = PatternScorer(bias=0.0, gain=10.0, pattern=torch.ones(1, 3, 16, 16), score_range=(0.0, 10.0))
    x = torch.full((2, 3, 16, 16), 0.3)
    x[1] = 0.7
    delta = FGSM()(tenths, x) - x
    assert float(delta[0].min()) > 0 and float(delta[1].max()) < 0
    assert torch.equal(delta, fgsm_probe(tenths, x)[2])
