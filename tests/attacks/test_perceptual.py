"""The perceptual attack's parts, on analytic models (exact values, milliseconds): the SSIM distance,
LPIPS / DISTS built from local weights only, the seeded one-level dither, the ascent of
(f − f₀)² − λ·D, and the per-image choice of the largest served change that passes the SSIM screen.
Its strength on a trained model: test_attacks.py."""

from __future__ import annotations

import functools

import piq
import pytest
import torch
from torch import nn

from tests.attacks.attack_fixtures import PatternModel, PatternScorer, grid_images
from tests.iqa_fixtures import synthetic_images
from training.gate.attacks import create_attack
from training.gate.attacks.perceptual import PerceptualAttack, load_distance, ssim_distance

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def no_distance(x: torch.Tensor, x0: torch.Tensor) -> torch.Tensor:
    return torch.zeros(x.shape[0])


def squared_distance(x: torch.Tensor, x0: torch.Tensor) -> torch.Tensor:
    return (x - x0).pow(2).flatten(1).sum(1)


def test_ssim_distance_is_one_minus_ssim_per_image() -> None:
    x = synthetic_images(3, 32, seed=2)
    noisy = (x + 8 / 255 * torch.randn(x.shape, generator=torch.Generator().manual_seed(0))).clamp(0, 1)
    d = ssim_distance(noisy, x)
    assert d.shape == (3,)
    assert torch.allclose(d, 1.0 - piq.ssim(noisy, x, data_range=1.0, reduction="none"))
    assert bool((d > 0.01).all()) and bool((d < 1.0).all())
    assert torch.allclose(ssim_distance(x, x), torch.zeros(3), atol=1e-5)


def _fake_piq_metric(kind: str, built: list[nn.Module]) -> type[nn.Module]:
    """Stands in for piq's LPIPS / DISTS, whose VGG16 weights (~500 MB) cannot be in a unit test:
    records which one was built, with which reduction, while torch.hub pointed where; its distance is
    2·mean|x − x0| per image (a scalar unless reduction="none", like piq's)."""

    class FakeMetric(nn.Module):
        def __init__(self, reduction: str = "mean") -> None:
            super().__init__()
            self.kind, self.reduction, self.hub_dir = kind, reduction, torch.hub.get_dir()
            self.scale = nn.Parameter(torch.tensor(2.0))
            built.append(self)

        def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            d = self.scale * (x - y).abs().flatten(1).mean(1)
            return d if self.reduction == "none" else d.mean()

    return FakeMetric


def test_lpips_and_dists_are_built_from_the_local_weights_only(
    tmp_path, monkeypatch: pytest.MonkeyPatch
) -> None:
    built: list[nn.Module] = []
    monkeypatch.setattr(piq, "LPIPS", _fake_piq_metric("lpips", built))
    monkeypatch.setattr(piq, "DISTS", _fake_piq_metric("dists", built))
    weights = tmp_path / "hub"
    (weights / "checkpoints").mkdir(parents=True)
    for name in ("lpips_weights.pt", "dists_weights.pt", "vgg16-397923af.pth"):
        (weights / "checkpoints" / name).write_bytes(b"")
    previous = torch.hub.get_dir()
    elsewhere = str(tmp_path / "elsewhere")
    torch.hub.set_dir(elsewhere)
    try:
        x, x0 = grid_images(2, seed=1), grid_images(2, seed=2)
        for name in ("lpips", "dists"):
            distance = load_distance(name, weights)
            metric = built[-1]
            assert (metric.kind, metric.reduction, metric.hub_dir) == (name, "none", str(weights))
            assert torch.hub.get_dir() == elsewhere  # the caller's hub directory is put back
            assert not metric.training and not any(p.requires_grad for p in metric.parameters())
            d = distance(x, x0)
            assert d.shape == (2,)
            assert torch.allclose(d, 2 * (x - x0).abs().flatten(1).mean(1))
        attack = create_attack("perceptual", distance="lpips", weights_dir=str(weights))
        assert attack.distance_name == "lpips" and built[-1].kind == "lpips"
    finally:
        torch.hub.set_dir(previous)


def test_perceptual_defaults_and_parameter_bounds() -> None:
    attack = PerceptualAttack()
    assert attack.lambdas == (1e3, 1e4, 3e4, 1e5, 1e6)
    assert (attack.steps, attack.step_size, attack.ssim_threshold, attack.seed) == (20, 1 / 255, 0.9, 0)
    assert attack.distance is ssim_distance and attack.distance_name == "ssim"
    assert attack.eps is None  # no ℓ∞ budget
    edge = PerceptualAttack(lambdas=[0.0, 0.5], steps=1, step_size=1e-6, seed=7)
    assert (edge.lambdas, edge.steps, edge.step_size, edge.seed) == ((0.0, 0.5), 1, 1e-6, 7)
    for kwargs in ({"lambdas": []}, {"lambdas": [1.0, -1.0]}, {"steps": 0}, {"step_size": 0.0}):
        with pytest.raises(ValueError):
            PerceptualAttack(**kwargs)


def test_a_custom_distance_is_used_and_named() -> None:
    attack = PerceptualAttack(distance=squared_distance)
    assert attack.distance is squared_distance and attack.distance_name == "squared_distance"
    assert "distance='squared_distance'" in repr(attack)
    assert PerceptualAttack(distance=functools.partial(squared_distance)).distance_name == "custom"


def test_the_start_is_a_seeded_dither_of_one_level() -> None:
    """Algorithm 1, line 2: x₀ + U{−1, 0, 1}/255 from the attack's own seeded generator (the global
    RNG does not matter), clamped to [0, 1]."""
    x = torch.full((4, 3, 16, 16), 0.5)
    attack = PerceptualAttack(seed=3)
    torch.manual_seed(0)
    start = attack._start(x)
    torch.manual_seed(1)
    assert torch.equal(attack._start(x), start)
    gen = torch.Generator().manual_seed(3)
    assert torch.allclose(start, x + torch.randint(-1, 2, x.shape, generator=gen) / 255.0, atol=1e-7)
    levels = (start - x) * 255
    assert torch.allclose(levels, levels.round(), atol=1e-4)
    assert set(levels.round().unique().tolist()) == {-1.0, 0.0, 1.0}
    assert not torch.equal(PerceptualAttack(seed=4)._start(x), start)
    assert float(attack._start(torch.zeros(1, 3, 8, 8)).min()) == 0.0


def test_the_ascent_moves_the_score_away_from_the_clean_one() -> None:
    """With λ = 0 the objective is (f − f₀)²: each sign step moves every pixel by 1/255 along
    sign(f − f₀)·w, so the score keeps going the way the dither started (down for some images, up
    for others); pixels the model ignores (w = 0, zero gradient) do not move."""
    pattern = torch.randint(-1, 2, (1, 3, 16, 16), generator=torch.Generator().manual_seed(9)).float()
    model = PatternModel(gain=100.0, pattern=pattern)
    x = grid_images(8, seed=4)
    y0 = model(x)
    attack = PerceptualAttack(lambdas=[0.0], steps=3, distance=no_distance, seed=0)
    start = attack._start(x)
    direction = torch.sign(model(start) - y0).view(-1, 1, 1, 1)
    assert set(direction.flatten().tolist()) == {-1.0, 1.0}
    out = attack._ascend(model, x, y0, 0.0)
    assert torch.allclose(out, start + 3 * direction * pattern / 255, atol=1e-6)


def test_the_distance_term_pulls_the_iterate_back_to_the_clean_image() -> None:
    """−λ·D is maximized: on a constant model one sign step of 1/255 undoes the one-level dither."""
    model = PatternModel(gain=0.0)
    x = grid_images(2, seed=5)
    attack = PerceptualAttack(lambdas=[1.0], steps=1, distance=squared_distance, seed=0)
    assert not torch.equal(attack._start(x), x)
    assert torch.allclose(attack._ascend(model, x, model(x), 1.0), x, atol=1e-6)


def test_candidates_are_judged_on_the_served_score() -> None:
    """Raw outputs above 100 are served as 100: no candidate changes what is served, so the clean image
    comes back even with the screen off; a plain module (no ``score``) is judged on its output."""
    x = grid_images(4, seed=6)
    attack = PerceptualAttack(lambdas=[0.0], steps=2, ssim_threshold=0.0, distance=no_distance)
    above = PatternScorer(bias=130.0, gain=100.0)
    with torch.no_grad():
        assert bool((above(x) > 101).all())
    assert torch.equal(attack(above, x), x)
    plain = PatternModel(bias=50.0, gain=100.0)
    out = attack(plain, x)
    with torch.no_grad():
        change = (plain(out) - plain(x)).abs()
    assert bool((change > 2 * 100.0 / 255 - 1e-4).all())  # two steps of 100/255, plus the dither's


def test_the_largest_served_change_wins_per_image() -> None:
    """λ = 0 moves each score by 3 steps of 100/255 (plus the dither's share), up or down; λ = 1e9
    keeps the image (changes nothing). The larger |Δscore| wins for every image, whichever way it moved."""
    model = PatternScorer(bias=50.0, gain=100.0)
    x = grid_images(8, seed=7)
    both = PerceptualAttack(lambdas=[0.0, 1e9], steps=3, ssim_threshold=0.0, distance=squared_distance)
    only = PerceptualAttack(lambdas=[0.0], steps=3, ssim_threshold=0.0, distance=squared_distance)
    with torch.no_grad():
        y0 = model(x)
        moved = model(only._ascend(model, x, y0, 0.0)) - y0
    assert bool((moved < 0).any()) and bool((moved > 0).any())
    out = both(model, x)
    assert torch.equal(out, only(model, x))
    with torch.no_grad():
        assert bool(((model(out) - y0).abs() > 300 / 255 - 1e-4).all())


def test_the_ssim_screen_is_per_image_and_inclusive() -> None:
    """An image whose candidate has SSIM ≥ the threshold (equal included) takes it; the others stay
    clean."""
    model = PatternScorer(bias=50.0, gain=100.0, size=32)
    x = synthetic_images(6, 32, seed=11)
    probe = PerceptualAttack(lambdas=[0.0], steps=4, distance=no_distance)
    with torch.no_grad():
        candidate = probe._ascend(model, x, model(x), 0.0)
        ssim = piq.ssim(candidate, x, data_range=1.0, reduction="none")
    threshold = float(ssim.sort().values[2])  # the third lowest: 2 images below, 4 at or above
    assert len(set(ssim.tolist())) == 6
    out = PerceptualAttack(lambdas=[0.0], steps=4, ssim_threshold=threshold, distance=no_distance)(model, x)
    taken = ssim >= threshold
    assert int(taken.sum()) == 4
    assert torch.equal(out[taken], candidate[taken]) and torch.equal(out[~taken], x[~taken])
