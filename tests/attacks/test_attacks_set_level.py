"""IOI (one filtered, texture-masked step) and the set-level ranking attack, with its path through
the gate's attack runner."""

from __future__ import annotations

import copy
import math
from collections.abc import Iterable, Iterator

import numpy as np
import pytest
import torch
from torch import nn

from tests.attacks.attack_fixtures import EPS, Probe, assert_delivered, deltas, sign_noise
from tests.iqa_fixtures import degraded_test_set, synthetic_images
from training.gate import attack_runs
from training.gate.attack_runs import EvalContext, run_section
from training.gate.attacks import (
    attack_class,
    create_attack,
    run_attack,
    score_images,
)
from training.gate.attacks.ioi import dominant_spectrum, remove_dominant, variation_mask
from training.gate.attacks.objectives import l_mid
from training.gate.attacks.pgd import PGD
from training.gate.attacks.ranking import plan_targets
from training.gate.data import EvalData
from training.gate.report import render_markdown
from training.gate.scoring import CropScorer
from training.gate.tables import ranking_table
from training.gate.tensors import input_gradient, predict
from training.metrics import srocc
from training.preprocessing import PreprocessConfig

pytestmark = pytest.mark.usefixtures("one_torch_thread")


# --- IOI ---------------------------------------------------------------------------------------


def test_ioi_one_gradient_moves_the_score_and_stays_less_visible_than_fgsm(
    model: nn.Module, images: torch.Tensor
) -> None:
    eps = EPS["ioi"]
    probe = Probe(copy.deepcopy(model))
    x_adv = create_attack("ioi", eps=eps)(probe, images)
    assert sum(probe.grad_enabled) == 1  # one iteration: a single gradient of the whole batch
    assert_delivered(images, x_adv, eps)
    assert torch.equal(create_attack("ioi", eps=eps)(model, images), x_adv)  # deterministic
    result = run_attack(create_attack("ioi", eps=eps), model, images)
    _, gain = deltas(model, images, result.x_adv)
    _, random_gain = deltas(model, images, sign_noise(images, eps))
    assert gain.mean() > 1.0 and gain.mean() > random_gain.mean()  # the L_mid direction, by points
    fgsm = run_attack(create_attack("fgsm", eps=eps, alpha=eps), model, images)
    assert result.ssim.mean() > fgsm.ssim.mean() + 0.01  # the filters make it less visible ...
    assert result.delta.abs().mean() > 0.25 * fgsm.delta.abs().mean()  # ... at a fraction of the effect


def test_ioi_filters() -> None:
    x = synthetic_images(2, 32, seed=8)
    dominant = dominant_spectrum(x, 0.07)
    per_channel = dominant.flatten(2).sum(-1)
    k = math.ceil(0.07 * 32 * 32)
    assert bool(((per_channel >= k) & (per_channel <= k + 2)).all())  # ties: conjugate pairs
    conjugate = torch.roll(torch.flip(dominant, dims=(-2, -1)), shifts=(1, 1), dims=(-2, -1))
    assert torch.equal(conjugate, dominant)
    assert bool(dominant[..., 0, 0].all())  # the mean (DC) is always the largest coefficient
    assert not bool(dominant_spectrum(x, 0.0).any())
    delta = torch.rand(x.shape, generator=torch.Generator().manual_seed(1)) - 0.5
    filtered = remove_dominant(delta, dominant)
    spectrum = torch.fft.fft2(filtered)
    assert float(spectrum[dominant].abs().max()) < 1e-3
    kept = ~dominant
    assert torch.allclose(spectrum[kept], torch.fft.fft2(delta)[kept], atol=1e-3)
    assert torch.allclose(remove_dominant(delta, torch.zeros_like(dominant)), delta, atol=1e-5)
    mask = variation_mask(x)
    assert float(mask.min()) >= 0.0 and float(mask.flatten(1).amax(1).min()) == pytest.approx(1.0)
    flat = torch.full((1, 3, 16, 16), 0.5)
    flat[..., 8:, :] = 0.7  # one edge in an otherwise flat image
    flat_mask = variation_mask(flat)
    assert float(flat_mask[..., :6, :].abs().max()) == 0.0  # flat regions are left alone
    assert float(flat_mask[..., 7:9, :].min()) > 0.5  # the edge takes the step


# --- the ranking attack: a set-level attack ----------------------------------------------------


def test_plan_targets_reverse_within_reach() -> None:
    s = torch.tensor([20.0, 35.0, 50.0, 65.0, 90.0])
    full = plan_targets(s, torch.full_like(s, 100.0), (0.0, 100.0))
    assert srocc(full.numpy(), s.numpy()) == pytest.approx(-1.0)
    assert torch.equal(plan_targets(s, torch.zeros_like(s), (0.0, 100.0)), s)
    reach = torch.tensor([5.0, 10.0, 3.0, 8.0, 20.0])
    t = plan_targets(s, reach, (0.0, 100.0))
    assert bool(((t - s).abs() <= reach + 1e-4).all())
    assert srocc(t.numpy(), s.numpy()) < 1.0
    raw = torch.tensor([-10.0, 40.0, 104.0])  # raw outputs beyond the range: targets stay inside it
    t = plan_targets(raw, torch.full_like(raw, 50.0), (0.0, 100.0))
    assert float(t.min()) >= 0.0 and float(t.max()) <= 100.0


def test_ranking_scrambles_the_order_more_than_pgd(model: nn.Module, images: torch.Tensor) -> None:
    """Same budget (2/255, 10 steps): per-image L_mid (PGD) barely changes the order of the set; the
    targets planned over the set do, and the images move by points, not rounding noise."""
    eps = 2 / 255
    ranked = run_attack(create_attack("ranking", eps=eps, steps=10), model, images)
    pgd = run_attack(create_attack("pgd", eps=eps, steps=10), model, images)
    assert_delivered(images, ranked.x_adv, eps)
    rank_srocc = srocc(ranked.adv_scores.numpy(), ranked.clean_scores.numpy())
    pgd_srocc = srocc(pgd.adv_scores.numpy(), pgd.clean_scores.numpy())
    assert rank_srocc < 0.95 and rank_srocc < pgd_srocc - 0.03
    assert ranked.delta.abs().mean() > 2.0
    again = run_attack(create_attack("ranking", eps=eps, steps=10), model, images)
    assert torch.equal(again.x_adv, ranked.x_adv)  # deterministic


def test_ranking_plans_over_the_whole_set(model: nn.Module, images: torch.Tensor) -> None:
    """``attack_set`` over batches equals attacking the concatenated set, and differs from attacking
    each batch as a set of its own: the targets are planned jointly."""
    attack = create_attack("ranking", eps=2 / 255, steps=3)
    assert attack_class("ranking").on_set and not attack_class("pgd").on_set
    whole = attack(model, images)
    parts = torch.cat(list(attack.attack_set(model, [images[:10], images[10:]])))
    assert torch.equal(parts, whole)
    assert torch.equal(run_attack(attack, model, images, batch_size=7).x_adv, whole)
    separate = torch.cat([attack(model, images[:10]), attack(model, images[10:])])
    assert not torch.equal(separate, whole)
    pgd = create_attack("pgd", eps=2 / 255, steps=3)
    assert torch.equal(torch.cat(list(pgd.attack_set(model, [images[:10], images[10:]]))),
                       torch.cat([pgd(model, images[:10]), pgd(model, images[10:])]))


# --- the gate's attack runner with a set-level attack -------------------------------------------


def _context(model: nn.Module) -> EvalContext:
    """Six images of two canonical sizes (so two size groups), a 32 px center-crop scorer."""
    cfg = PreprocessConfig(short_side=64, max_long_side=96, crop_size=32, num_eval_crops=1)
    square = degraded_test_set(4, 64, seed=31)[0]
    wide = degraded_test_set(2, 96, seed=32)[0][:, :, :64, :]
    data = EvalData([*square, *wide], np.linspace(20, 90, 6), [f"img{i}" for i in range(6)])
    return EvalContext(
        cfg={"batch_size": 3, "fit_logistic": False}, data=data, served=CropScorer(model, cfg),
        scorer=CropScorer(model, cfg), surrogate=None, surrogate_id=None, cache_dir=None,
    )


def test_runner_hands_a_set_level_attack_the_whole_section(model: nn.Module) -> None:
    ctx = _context(model)
    entry = {"attack": "ranking", "params": {"eps": 4 / 255, "steps": 3}}
    result = run_section("ranking", entry, ctx)
    assert result["status"] == "ok", result.get("reason")
    assert result["set_level"] is True and result["n_images"] == 6
    # The same numbers as the attack planning over every image at once, batch by batch.
    attack = create_attack("ranking", eps=4 / 255, steps=3)
    batches = list(ctx.data.batches(ctx.batch_size))
    expected = np.empty(6)
    adversarial = attack.attack_set(ctx.scorer, [x for _, x in batches])
    for (positions, _), x_adv in zip(batches, adversarial, strict=True):
        expected[positions] = score_images(ctx.scorer, x_adv).numpy()
    assert np.allclose(result["per_image"]["adv"], expected, atol=1e-4)
    assert result["metrics"]["clean_vs_adv"]["srocc"] < 1.0
    fgsm = run_section("fgsm", {"attack": "fgsm", "params": {}}, ctx)
    assert fgsm["status"] == "ok" and fgsm["set_level"] is False
    table = ranking_table({"r": {"attacks": {"fgsm": fgsm, "ranking": result}}})
    assert table is not None and "| ranking | 6 |" in table and "fgsm" not in table
    assert ranking_table({"r": {"attacks": {"fgsm": fgsm}}}) is None
    markdown = render_markdown({"attacks": {"fgsm": fgsm, "ranking": result}})
    assert "Ranking under set-level attacks" in markdown and "| ranking | 6 |" in markdown


def test_runner_fails_an_attack_that_answers_part_of_the_set(
    model: nn.Module, monkeypatch: pytest.MonkeyPatch
) -> None:
    class Partial(PGD):
        def attack_set(self, model: nn.Module, batches: Iterable[torch.Tensor]) -> Iterator[torch.Tensor]:
            yield self(model, next(iter(batches)))

    monkeypatch.setattr(attack_runs, "create_attack", lambda kind, **params: Partial(steps=1))
    result = run_section("pgd", {"attack": "pgd", "params": {}}, _context(model))
    assert result["status"] == "error" and "answered 3 of 6" in result["reason"]


def test_ioi_is_the_filtered_and_masked_fgsm_step(model: nn.Module, images: torch.Tensor) -> None:
    """Before delivery IOI's image is x + M·HP(δ): the FGSM step δ (one gradient of L_mid, α = ε)
    without the clean image's dominant Fourier coefficients, times the texture mask."""
    x, eps = images[:6], 4 / 255
    grad = input_gradient(model, x, l_mid, predict(model, x).detach())
    step = (x + eps * grad.sign()).clamp(0.0, 1.0) - x
    expected = x + variation_mask(x) * remove_dominant(step, dominant_spectrum(x, 0.07))
    attack = create_attack("ioi", eps=eps)
    assert torch.allclose(attack.perturb(model, x), expected, atol=1e-6)
    unfiltered = x + variation_mask(x) * step
    assert float((expected - unfiltered).abs().max()) > 0.1 * eps  # the filter matters at this size
