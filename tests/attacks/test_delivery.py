"""What every attack shares (training/gate/attacks/base.py, quality.py): input validation, the 8-bit
delivery inside the ε-ball at its edges, the projected ascent, float32 delivery, and how images are
scored and measured (in ``batch_size`` chunks, out-of-range pixels clamped), on analytic models."""

from __future__ import annotations

import math

import numpy as np
import piq
import pytest
import torch
from torch import nn

from tests.attacks.attack_fixtures import PatternModel, PatternScorer, Probe, grid_images
from tests.iqa_fixtures import TinyIQA, synthetic_images
from training.gate.attacks import adversarial_quality, create_attack, run_attack, score_images
from training.gate.attacks.base import quantize_in_ball, score_midpoint, sign_ascent, validate_images
from training.gate.attacks.objectives import l_mid
from training.gate.attacks.pgd import PGD
from training.gate.attacks.quality import measure_attack

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_score_midpoint_is_50_without_a_score_range() -> None:
    assert score_midpoint(nn.Identity()) == 50.0
    assert score_midpoint(PatternModel(score_range=(0.0, 10.0))) == 5.0


def test_validate_images_accepts_float_rgb_batches_in_the_unit_range_with_a_small_tolerance() -> None:
    for bad in (
        np.zeros((1, 3, 4, 4), dtype=np.float32),  # not a tensor
        torch.zeros(2, 3, 4),  # 3-D, though its second axis is 3
        torch.zeros(1, 1, 4, 4),  # one channel
        torch.zeros(1, 3, 4, 4, dtype=torch.uint8),  # integer levels
    ):
        with pytest.raises(ValueError, match="N x 3 x H x W"):
            validate_images(bad)  # type: ignore[arg-type]
    validate_images(torch.full((1, 3, 2, 2), -1e-6))  # the tolerance is inclusive on both sides
    validate_images(torch.full((1, 3, 2, 2), 1 + 1e-6))
    validate_images(torch.zeros(0, 3, 2, 2))
    for value in (-0.5, -2e-6, 1 + 3e-6):
        with pytest.raises(ValueError, match=r"\[0, 1\]"):
            validate_images(torch.full((1, 3, 2, 2), value))


@pytest.mark.parametrize("eps", [2.6 / 255, 0.7 / 255])
def test_quantize_in_ball_rounds_toward_x_when_rounding_would_leave_the_ball(eps: float) -> None:
    """ε with a fractional part above one half (in levels): plain rounding of x ± ε lands one level
    outside the ball; the delivered pixel is the last level inside it, on both sides."""
    x = torch.tensor([100.0, 100.0, 0.0, 255.0]).view(1, 1, 2, 2).expand(1, 3, 2, 2) / 255
    x_adv = x + torch.tensor([1.0, -1.0, -1.0, 1.0]).view(1, 1, 2, 2) * 0.5  # far outside the ball
    q = quantize_in_ball(x_adv, x, eps) * 255
    inside = math.floor(eps * 255)
    assert torch.allclose(q[0, 0].flatten(), torch.tensor([100.0 + inside, 100.0 - inside, 0.0, 255.0]))
    assert float((q / 255 - x).abs().max()) <= eps + 1e-7


def test_quantize_in_ball_with_no_level_in_the_ball_takes_the_level_nearest_to_x() -> None:
    """Off-grid x and ε < 1/255: [x − ε, x + ε] may hold no level; then the level nearest to x."""
    levels = torch.tensor([127.7, 200.2, 50.6, 10.0])  # in 1/255 units; 10 is on the grid
    x = (levels / 255).view(1, 1, 2, 2).expand(1, 3, 2, 2)
    q = quantize_in_ball(x + 0.05 / 255, x, 0.1 / 255) * 255
    assert torch.allclose(q[0, 0].flatten(), torch.tensor([128.0, 200.0, 51.0, 10.0]), atol=1e-4)


def test_sign_ascent_projects_the_start_into_the_ball() -> None:
    model = PatternModel()
    x = grid_images(2, seed=1)
    start = sign_ascent(model, x, l_mid, model(x).detach(), 4 / 255, 1 / 255, 0, x_init=x + 0.5)
    assert float((start - x).abs().max()) == pytest.approx(4 / 255, abs=1e-6)


def test_eps_may_be_one_but_not_more() -> None:
    assert PGD(eps=1.0).eps == 1.0
    for eps in (0.0, 1.5, float("inf"), float("nan")):
        with pytest.raises(ValueError):
            PGD(eps=eps)


def test_attacks_deliver_float32_whatever_the_input_float_type() -> None:
    model = PatternModel()
    x = grid_images(2, seed=2)
    out = create_attack("fgsm")(model, x.double())
    assert out.dtype == torch.float32
    assert torch.equal(out, create_attack("fgsm")(model, x))


def test_adversarial_quality_values_and_out_of_range_pixels() -> None:
    x = synthetic_images(2, 16, seed=4)
    noisy = (x + 6 / 255 * torch.randn(x.shape, generator=torch.Generator().manual_seed(1))).clamp(0, 1)
    q = adversarial_quality(x, noisy)
    assert torch.allclose(q["ssim"], piq.ssim(noisy, x, data_range=1.0, reduction="none"))
    mse = (noisy - x).pow(2).flatten(1).mean(1)
    assert torch.allclose(q["psnr"], 10 * torch.log10(1 / (mse + 1e-8)), atol=1e-3)
    clean = torch.full((1, 3, 16, 16), 0.8)
    clean[..., :8] = 0.1
    beyond = clean.clone()
    beyond[..., 8:] = 1.3  # out of range: measured as 1.0
    beyond[..., :8] = -0.4  # measured as 0.0
    assert q["linf"].shape == (2,)
    assert adversarial_quality(clean, beyond)["linf"].tolist() == pytest.approx([0.2])
    assert adversarial_quality(beyond, clean)["linf"].tolist() == pytest.approx([0.2])


def test_score_images_serves_the_score_in_float32_chunks() -> None:
    x = grid_images(5, seed=3)
    plain = PatternModel(bias=130.0)  # no ``score``: its raw output is what is scored
    assert torch.allclose(score_images(plain, x), plain(x))
    assert bool((score_images(PatternScorer(bias=130.0), x) == 100.0).all())
    probe = Probe(PatternScorer(), keep_inputs=True)
    scores = score_images(probe, x.double(), batch_size=2)
    assert scores.dtype == torch.float32 and scores.shape == (5,)
    assert [len(seen) for seen in probe.inputs] == [2, 2, 1]
    assert all(seen.dtype == torch.float32 for seen in probe.inputs)
    torch.manual_seed(0)
    conv = TinyIQA()
    assert torch.equal(score_images(conv, x.double()), score_images(conv, x))


def test_measure_and_run_attack_work_in_batch_size_chunks() -> None:
    """``batch_size`` bounds every forward: the attack's, and the scoring of clean and attacked images."""
    x = grid_images(5, seed=5)
    probe = Probe(PatternScorer(), keep_inputs=True)
    measure_attack(probe, x, x, batch_size=2)
    assert [len(seen) for seen in probe.inputs] == [2, 2, 1, 2, 2, 1]
    probe = Probe(PatternScorer(), keep_inputs=True)
    result = run_attack(create_attack("fgsm"), probe, x, batch_size=2)
    assert max(len(seen) for seen in probe.inputs) == 2
    assert sum(probe.grad_enabled) == 3  # one gradient per chunk
    whole = run_attack(create_attack("fgsm"), PatternScorer(), x)
    assert torch.equal(result.x_adv, whole.x_adv)
