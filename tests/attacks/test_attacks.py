"""Attacks on a tiny trained IQA model: the registry, objectives and 8-bit delivery, white-box
strength against random noise, transfer from a surrogate and query-only Square. Hygiene and what the
model sees: test_attack_hygiene.py; IOI and the set-level ranking attack: test_attacks_set_level.py;
parameters and defaults pinned by mutation testing: test_attack_parameters.py."""

from __future__ import annotations

import copy
from typing import ClassVar

import pytest
import torch
from torch import nn

from tests.attacks.attack_fixtures import (
    ALL_ATTACKS,
    EPS,
    Probe,
    assert_delivered,
    deltas,
    sign_noise,
    sign_permuted,
)
from tests.iqa_fixtures import synthetic_images
from training.gate.attacks import (
    UAP,
    Attack,
    create_attack,
    intensity_sweep,
    list_attacks,
    register_attack,
    run_attack,
)
from training.gate.attacks.base import quantize_8bit, quantize_in_ball
from training.gate.attacks.objectives import l_mae, l_mid, l_mse, make_objective

pytestmark = pytest.mark.usefixtures("one_torch_thread")


# --- registry ---------------------------------------------------------------------------------


def test_registry_lists_all_attacks() -> None:
    assert set(list_attacks()) == ALL_ATTACKS
    assert list_attacks("*fgsm") == ["fgsm", "ifgsm"]


def test_duplicate_registration_raises() -> None:
    class Again(Attack):
        name: ClassVar[str] = "fgsm"

        def perturb(self, model: nn.Module, x: torch.Tensor) -> torch.Tensor:
            return x

    with pytest.raises(ValueError, match="already registered"):
        register_attack(Again)
    assert set(list_attacks()) == ALL_ATTACKS


def test_unknown_attack_lists_names() -> None:
    with pytest.raises(ValueError, match=r"unknown attack 'cw'.*fgsm.*square"):
        create_attack("cw")


def test_create_attack_drops_none_and_validates() -> None:
    attack = create_attack("pgd", eps=None, steps=20)
    assert attack.eps == pytest.approx(4 / 255) and attack.steps == 20  # type: ignore[attr-defined]
    with pytest.raises(ValueError):
        create_attack("fgsm", eps=0.0)
    with pytest.raises(ValueError, match="objective"):
        create_attack("ifgsm", objective="hinge")


# --- objectives and 8-bit delivery ------------------------------------------------------------


def test_objectives_match_eq_s20_s22() -> None:
    pred = torch.tensor([30.0, 70.0, 40.0])
    y = torch.tensor([20.0, 80.0, 50.0])
    assert torch.equal(l_mid(pred, y), torch.tensor([30.0, -70.0, 40.0]))  # y = 50 counts as low
    assert torch.equal(l_mae(pred, y), torch.tensor([10.0, 10.0, 10.0]))
    assert torch.equal(l_mse(pred, y), torch.tensor([100.0, 100.0, 100.0]))
    assert torch.equal(make_objective("mid", mid=35.0)(pred, y), torch.tensor([30.0, -70.0, -40.0]))
    with pytest.raises(ValueError, match="mae, mid, mse"):
        make_objective("l2")


@pytest.mark.parametrize("eps", [0.005, 4 / 255, 0.04, 0.01234])
def test_quantize_in_ball_keeps_budget_on_grid(eps: float) -> None:
    gen = torch.Generator().manual_seed(1)
    x = torch.randint(0, 256, (4, 3, 16, 16), generator=gen).float() / 255
    x_adv = x + (torch.rand(x.shape, generator=gen) * 4 - 2) * eps  # up to 2ε outside the ball
    q = quantize_in_ball(x_adv, x, eps)
    assert_delivered(x, q, eps)
    # Where rounding already respects the budget, the result is plain rounding.
    rounded = quantize_8bit(x_adv.clamp(x - eps, x + eps))
    ok = (rounded - x).abs() <= eps + 1e-6
    assert torch.equal(q[ok], rounded[ok])


def test_quantize_in_ball_off_grid_input_small_eps() -> None:
    x = torch.full((1, 3, 2, 2), 0.5 + 0.3 / 255)  # not on the grid
    q = quantize_in_ball(x + 0.001, x, 0.001)  # no level within 0.001 of x
    assert torch.allclose(q, torch.full_like(x, 128 / 255))  # nearest level to x


# --- white-box attacks ------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["fgsm", "ifgsm", "pgd"])
def test_white_box_beats_random_noise_and_direction(
    name: str, model: nn.Module, images: torch.Tensor
) -> None:
    eps = EPS[name]
    result = run_attack(create_attack(name), model, images)
    assert_delivered(images, result.x_adv, eps)
    random_delta, _ = deltas(model, images, sign_noise(images, eps))
    assert result.delta.abs().mean() > 2 * random_delta.abs().mean()
    low = result.clean_scores <= 50
    assert 3 <= int(low.sum()) <= len(low) - 3
    assert result.delta[low].mean() > 0  # L_mid: low-quality images are pushed up ...
    assert result.delta[~low].mean() < 0  # ... high-quality images down


def test_pgd_stronger_with_more_budget(model: nn.Module, images: torch.Tensor) -> None:
    small = run_attack(create_attack("pgd", eps=2 / 255), model, images).delta.abs().mean()
    large = run_attack(create_attack("pgd", eps=8 / 255), model, images).delta.abs().mean()
    assert large > small > 0


def test_fgsm_mse_objective_has_zero_gradient_at_clean_point(model: nn.Module, images: torch.Tensor) -> None:
    """The paper's Table S6 finding in its limit: MSE against the clean prediction is flat at x."""
    x_adv = create_attack("fgsm", objective="mse")(model, images)
    assert torch.equal(x_adv, images)


def test_perceptual_attack(model: nn.Module, images: torch.Tensor) -> None:
    attack = create_attack("perceptual", lambdas=[1e4, 1e5], steps=10)
    result = run_attack(attack, model, images)
    assert_delivered(images, result.x_adv, None)
    changed = (result.x_adv != images).flatten(1).any(1)
    assert bool(changed.any())
    assert bool((result.ssim[changed] >= 0.9).all())  # the imperceptibility screen
    permuted_delta, _ = deltas(model, images, sign_permuted(images, result.x_adv))
    assert result.delta.abs().mean() > 2 * permuted_delta.abs().mean()
    random_delta, _ = deltas(model, images, sign_noise(images, 4 / 255))
    assert result.delta.abs().mean() > random_delta.abs().mean()


def test_perceptual_returns_original_when_no_lambda_passes(model: nn.Module, images: torch.Tensor) -> None:
    attack = create_attack("perceptual", lambdas=[1e3], steps=2, ssim_threshold=1.01)
    assert torch.equal(attack(model, images[:4]), images[:4])


def test_perceptual_lpips_without_local_weights_fails_clearly(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="local weights"):
        create_attack("perceptual", distance="lpips")
    with pytest.raises(FileNotFoundError, match=r"lpips_weights\.pt"):
        create_attack("perceptual", distance="lpips", weights_dir=str(tmp_path))


def test_intensity_sweep(model: nn.Module, images: torch.Tensor) -> None:
    rows = intensity_sweep(model, images[:8], eps_list=[1 / 255, 4 / 255], iters_list=[1, 5])
    assert [(r["eps"], r["iters"]) for r in rows] == [(1 / 255, 1), (1 / 255, 5), (4 / 255, 1), (4 / 255, 5)]
    assert rows[-1]["mean_abs_delta"] > rows[0]["mean_abs_delta"]
    assert rows[-1]["mean_ssim"] < rows[0]["mean_ssim"] <= 1.0


# --- black-box and transfer attacks -----------------------------------------------------------


def test_korhonen_transfers_from_surrogate(
    model: nn.Module, surrogate: nn.Module, images: torch.Tensor
) -> None:
    """Gradients of seed 1 only; the target (seed 0) is never differentiated."""
    eps = EPS["korhonen"]
    x_adv = create_attack("korhonen", surrogate=surrogate)(model, images)
    assert_delivered(images, x_adv, eps)
    delta, gain = deltas(model, images, x_adv)
    random_delta, random_gain = deltas(model, images, sign_noise(images, eps))
    permuted_delta, _ = deltas(model, images, sign_permuted(images, x_adv))
    assert delta.abs().mean() > random_delta.abs().mean()
    assert gain.mean() > 2 * random_gain.mean()  # moves the target the intended way
    assert delta.abs().mean() > 2 * permuted_delta.abs().mean()  # the signs carry the effect


def test_uap_transfers_from_surrogate(
    model: nn.Module, surrogate: nn.Module, images: torch.Tensor, fitted_uap: UAP
) -> None:
    """One perturbation, fitted on the surrogate over other images, applied to the target.

    Random ±0.04 noise is itself a strong attack on these noise-measuring models (it adds the very
    noise they score), so "beats random noise" is a demanding bar; the fitted UAP clears it on the
    target and beats it by far on the surrogate it was fitted on.
    """
    x_adv = fitted_uap(model, images)
    assert_delivered(images, x_adv, 0.04)
    delta, _ = deltas(model, images, x_adv)
    random_delta, _ = deltas(model, images, sign_noise(images, 0.04))
    assert delta.abs().mean() > random_delta.abs().mean()
    surrogate_delta, _ = deltas(surrogate, images, x_adv)
    surrogate_random, _ = deltas(surrogate, images, sign_noise(images, 0.04))
    assert surrogate_delta.abs().mean() > 2 * surrogate_random.abs().mean()


def test_uap_any_size_save_load(model: nn.Module, fitted_uap: UAP, tmp_path) -> None:
    x = synthetic_images(2, size=96, seed=3)[:, :, :80, :]  # 80×96: not a multiple of the 64 tile
    x_adv = fitted_uap(model, x)
    assert_delivered(x, x_adv, 0.04)
    path = tmp_path / "uap.pt"
    fitted_uap.save(path)
    reloaded = create_attack("uap", path=str(path))
    assert torch.equal(reloaded(model, x), x_adv)
    with pytest.raises(RuntimeError, match="fit"):
        create_attack("uap")(model, x)


def test_square_is_query_only_and_beats_random(model: nn.Module, images: torch.Tensor) -> None:
    probe = Probe(copy.deepcopy(model))
    x = images[:16]
    x_adv = create_attack("square", n_queries=500, p_init=0.1)(probe, x)
    assert_delivered(x, x_adv, EPS["square"])
    assert probe.calls == 500  # the budget, batched: one forward of the batch per query
    assert not any(probe.grad_enabled)
    delta, gain = deltas(model, x, x_adv)
    random_delta, random_gain = deltas(model, x, sign_noise(x, EPS["square"]))
    assert delta.abs().mean() > random_delta.abs().mean()
    assert gain.mean() > random_gain.mean()
