"""Attacks on a tiny trained IQA model: strength vs random noise, projections (of the delivered image
and of every iterate the model sees), 8-bit delivery, PGD's random start, transfer from a surrogate
(the target never queried), query-only behaviour on the served score, IOI, the set-level ranking
attack and its path through the gate's attack runner, mode / gradient hygiene and the registry."""

from __future__ import annotations

import copy
import math
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest
import torch
from torch import nn

from tests.iqa_fixtures import degrade, degraded_test_set, small_trained_model, synthetic_images
from training.gate import attack_runs
from training.gate.attack_runs import EvalContext, run_section
from training.gate.attacks import (
    UAP,
    Attack,
    AttackResult,
    adversarial_quality,
    attack_class,
    create_attack,
    intensity_sweep,
    list_attacks,
    register_attack,
    run_attack,
    score_images,
)
from training.gate.attacks.base import quantize_8bit, quantize_in_ball
from training.gate.attacks.fgsm import IFGSM
from training.gate.attacks.ioi import dominant_spectrum, remove_dominant, variation_mask
from training.gate.attacks.objectives import l_mae, l_mid, l_mse, make_objective
from training.gate.attacks.pgd import PGD
from training.gate.attacks.ranking import plan_targets
from training.gate.data import EvalData
from training.gate.report import render_markdown
from training.gate.scoring import CropScorer
from training.gate.tables import ranking_table
from training.gate.tensors import input_gradient, predict
from training.metrics import srocc
from training.preprocessing import PreprocessConfig

ALL_ATTACKS = {"fgsm", "ifgsm", "pgd", "perceptual", "uap", "korhonen", "square", "ioi", "ranking"}
EPS = {
    "fgsm": 0.005, "ifgsm": 0.005, "pgd": 4 / 255, "korhonen": 4 / 255, "square": 4 / 255, "uap": 0.04,
    "ioi": 4 / 255, "ranking": 4 / 255,
}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def model() -> nn.Module:
    return small_trained_model(0)


@pytest.fixture(scope="module")
def surrogate() -> nn.Module:
    return small_trained_model(1)


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    """24 held-out noisy images, scores spread over the range (both L_mid branches present)."""
    return degraded_test_set(24, 64)[0]


@pytest.fixture(scope="module")
def fit_images() -> torch.Tensor:
    """Images for fitting the UAP, disjoint from ``images``."""
    return degrade(synthetic_images(64, 64, seed=55), torch.Generator().manual_seed(77))[0]


@pytest.fixture(scope="module")
def fitted_uap(surrogate: nn.Module, fit_images: torch.Tensor) -> UAP:
    uap = create_attack("uap", surrogate=surrogate, objective="mid", size=64)
    assert isinstance(uap, UAP)
    return uap.fit(images=fit_images)


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
    probe = _Probe(copy.deepcopy(model))
    x = images[:16]
    x_adv = create_attack("square", n_queries=500, p_init=0.1)(probe, x)
    assert_delivered(x, x_adv, EPS["square"])
    assert probe.calls == 500  # the budget, batched: one forward of the batch per query
    assert not any(probe.grad_enabled)
    delta, gain = deltas(model, x, x_adv)
    random_delta, random_gain = deltas(model, x, sign_noise(x, EPS["square"]))
    assert delta.abs().mean() > random_delta.abs().mean()
    assert gain.mean() > random_gain.mean()


# --- hygiene common to every attack -----------------------------------------------------------


class _Probe(nn.Module):
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


def _build(name: str, surrogate: nn.Module, fitted_uap: UAP) -> Attack:
    small = {
        "fgsm": {},
        "ifgsm": {"steps": 3},
        "pgd": {"steps": 3},
        "perceptual": {"lambdas": [1e4], "steps": 3},
        "korhonen": {"surrogate": surrogate, "steps": 3},
        "square": {"n_queries": 10},
        "ioi": {},
        "ranking": {"steps": 3},
    }
    if name == "uap":
        return fitted_uap
    return create_attack(name, **small[name])


@pytest.mark.parametrize("name", sorted(ALL_ATTACKS))
def test_mode_restored_no_param_grads_delivered(
    name: str, model: nn.Module, surrogate: nn.Module, fitted_uap: UAP, images: torch.Tensor
) -> None:
    probe = _Probe(copy.deepcopy(model))
    probe.train()
    x = images[:4]
    x_adv = _build(name, surrogate, fitted_uap)(probe, x)
    assert probe.training and probe.inner.training  # mode put back
    if attack_class(name).needs_surrogate:
        assert probe.calls == 0  # a transfer attack never queries the target
    else:
        assert probe.calls > 0 and not any(probe.training_seen)  # ran in eval mode
    assert all(p.grad is None for p in probe.parameters())
    assert all(p.grad is None for p in surrogate.parameters())
    assert not x_adv.requires_grad
    assert_delivered(x, x_adv, EPS.get(name))


def test_run_attack_result_and_chunking(model: nn.Module, images: torch.Tensor) -> None:
    attack = create_attack("fgsm")
    whole = run_attack(attack, model, images)
    chunked = run_attack(attack, model, images, batch_size=5)
    assert isinstance(whole, AttackResult)
    assert torch.equal(whole.x_adv, chunked.x_adv)
    assert torch.allclose(whole.adv_scores, chunked.adv_scores, atol=1e-4)
    n = images.shape[0]
    for field in (whole.clean_scores, whole.adv_scores, whole.ssim, whole.psnr, whole.linf):
        assert field.shape == (n,)
    assert torch.allclose(whole.delta, whole.adv_scores - whole.clean_scores)
    assert set(whole.summary()) == {"mean_abs_delta", "mean_delta", "mean_ssim", "mean_psnr", "max_linf"}
    assert float(whole.clean_scores.min()) >= 0.0 and float(whole.clean_scores.max()) <= 100.0


def test_adversarial_quality() -> None:
    x = synthetic_images(3, size=32, seed=4)
    same = adversarial_quality(x, x.clone())
    assert torch.allclose(same["ssim"], torch.ones(3), atol=1e-5)
    assert torch.equal(same["linf"], torch.zeros(3))
    x_adv = sign_noise(x, 4 / 255)
    q = adversarial_quality(x, x_adv)
    assert torch.allclose(q["linf"], torch.full((3,), 4 / 255), atol=1e-6)
    assert bool((q["ssim"] < 1).all())
    assert bool((q["psnr"] >= 36.0).all())  # 20·log10(255/4) = 36.1 dB (clamped pixels raise it)


def test_rejects_bad_input(model: nn.Module) -> None:
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        create_attack("fgsm")(model, torch.full((1, 3, 16, 16), 2.0))
    with pytest.raises(ValueError, match="N x 3 x H x W"):
        create_attack("fgsm")(model, torch.zeros(3, 16, 16))


# --- what the model sees during an attack: every iterate, the start point, the target ----------


@pytest.mark.parametrize(
    ("name", "params"),
    [
        ("ifgsm", {"eps": 4 / 255, "steps": 10}),
        ("pgd", {"eps": 4 / 255, "steps": 10}),
        ("ranking", {"eps": 4 / 255, "steps": 10}),
        ("korhonen", {"eps": 4 / 255, "steps": 10}),  # the surrogate sees the iterates
    ],
)
def test_every_iterate_stays_in_the_ball(
    name: str, params: dict, model: nn.Module, surrogate: nn.Module, images: torch.Tensor
) -> None:
    """The projection onto the ε-ball happens at every step, not only when the result is delivered:
    each input the (gradient-taking) model evaluates is within ε of x and in [0, 1]. Without the
    per-step projection the 10 steps of 2.5·ε/10 drift to 2.25·ε by the last gradient."""
    x = images[:8]
    eps = params["eps"]
    if name == "korhonen":
        seer = _Probe(copy.deepcopy(surrogate), keep_inputs=True)
        create_attack(name, surrogate=seer, **params)(model, x)
    else:
        seer = _Probe(copy.deepcopy(model), keep_inputs=True)
        create_attack(name, **params)(seer, x)
    iterates = seer.gradient_inputs
    assert len(iterates) >= params["steps"]
    for step, seen in enumerate(iterates):
        assert seen.shape == x.shape
        assert float((seen - x).abs().max()) <= eps + 1e-6, f"iterate {step} left the ε-ball"
        assert float(seen.min()) >= 0.0 and float(seen.max()) <= 1.0, f"iterate {step} left [0, 1]"
    assert float((iterates[-1] - x).abs().max()) > 0.9 * eps  # the iterates do reach the boundary


def test_pgd_starts_at_a_seeded_uniform_point_in_the_ball(model: nn.Module, images: torch.Tensor) -> None:
    """PGD's first gradient is taken at x + U(−ε, ε) (projected to [0, 1]), not at x: the random start
    is what separates it from I-FGSM. The start is reproducible per seed and differs across seeds."""
    x, eps = images[:4], 4 / 255

    def first_iterate(seed: int) -> torch.Tensor:
        probe = _Probe(copy.deepcopy(model), keep_inputs=True)
        create_attack("pgd", eps=eps, steps=2, seed=seed)(probe, x)
        return probe.gradient_inputs[0]

    start = first_iterate(0)
    offset = (start - x).abs()
    inside = (x > eps) & (x < 1 - eps)  # pixels where [0, 1] does not cut the ball
    assert float(offset.max()) <= eps + 1e-6
    assert float(offset[inside].min()) > 0  # every such pixel moved
    spread = float((offset[inside] > eps / 2).float().mean())
    assert 0.4 < spread < 0.6  # uniform on [−ε, ε]: |u| > ε/2 half of the time
    assert float(offset[inside].mean()) == pytest.approx(eps / 2, rel=0.05)
    assert torch.equal(first_iterate(0), start)
    assert not torch.equal(first_iterate(1), start)
    pgd = create_attack("pgd", eps=eps, steps=2, seed=0)(model, x)
    ifgsm = create_attack("ifgsm", eps=eps, steps=2)(model, x)
    assert not torch.equal(pgd, ifgsm)


def test_korhonen_never_queries_or_differentiates_the_target(
    model: nn.Module, surrogate: nn.Module, images: torch.Tensor
) -> None:
    """Transfer means the gradients come from the surrogate only: zero calls of the target (with or
    without gradients), one gradient of the surrogate per step. White-box (no surrogate) is the
    explicit opposite."""
    x = images[:6]
    target = _Probe(copy.deepcopy(model))
    source = _Probe(copy.deepcopy(surrogate))
    x_adv = create_attack("korhonen", surrogate=source, steps=4)(target, x)
    assert target.calls == 0
    assert sum(source.grad_enabled) == 4
    assert not torch.equal(x_adv, x)
    white_box = _Probe(copy.deepcopy(model))
    create_attack("korhonen", steps=4)(white_box, x)
    assert sum(white_box.grad_enabled) == 4


# --- Square sees the served score only ---------------------------------------------------------


class _Linear(nn.Module):
    """raw = bias + gain·mean(w·x) over a fixed ±1 pattern w; ``score`` clamps to [0, 100]. With
    ``clamp_forward`` the raw output is clamped too, so both variants serve identical scores."""

    def __init__(self, bias: float, gain: float, clamp_forward: bool = False) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(5)
        self.register_buffer("w", (torch.randint(0, 2, (1, 3, 32, 32), generator=gen) * 2 - 1).float())
        self.bias, self.gain, self.clamp_forward = bias, gain, clamp_forward

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raw = self.bias + self.gain * (x * self.w).mean((1, 2, 3))
        return raw.clamp(0.0, 100.0) if self.clamp_forward else raw

    def score(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward(x).clamp(0.0, 100.0)


def test_square_decides_on_the_served_clamped_score() -> None:
    """Scores above the range are served as 100, so a query-only attacker sees no change there. Two
    models that serve identical scores (raw output beyond 100, or clamped already) must get identical
    adversarial images; querying the raw output accepts steps on the first model only."""
    x = torch.round(torch.rand(6, 3, 32, 32, generator=torch.Generator().manual_seed(2)) * 255) / 255
    x = x * 0.5 + 0.25
    beyond, clamped = _Linear(130.0, 3000.0), _Linear(130.0, 3000.0, clamp_forward=True)
    with torch.no_grad():
        assert bool((beyond(x) > 100).all()) and torch.equal(beyond.score(x), clamped.score(x))
    attack = create_attack("square", n_queries=60, seed=0)
    assert torch.equal(attack(beyond, x), attack(clamped, x))


# --- IOI ---------------------------------------------------------------------------------------


def test_ioi_one_gradient_moves_the_score_and_stays_less_visible_than_fgsm(
    model: nn.Module, images: torch.Tensor
) -> None:
    eps = EPS["ioi"]
    probe = _Probe(copy.deepcopy(model))
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


# --- mutation testing (make mutation, docs/MUTATION.md): registry, base helpers, PGD, sweep, Square ---


def test_register_attack_registers_the_class_itself(monkeypatch: pytest.MonkeyPatch) -> None:
    """On a fresh registry (the shared one is left alone): the decorator returns the class, and the
    name then builds an instance of exactly that class."""
    from training.gate.attacks import _registry
    from training.registry import Registry

    monkeypatch.setattr(_registry, "_ATTACKS", Registry("attack"))

    class Identity(Attack):
        name: ClassVar[str] = "identity-for-tests"

        def perturb(self, model: nn.Module, x: torch.Tensor) -> torch.Tensor:
            return x

    assert register_attack(Identity) is Identity
    assert attack_class("identity-for-tests") is Identity
    assert type(create_attack("identity-for-tests", eps=0.5)) is Identity
    assert list_attacks() == ["identity-for-tests"]
    _registry._ATTACKS.register("not-an-attack", dict)
    with pytest.raises(AssertionError):
        attack_class("not-an-attack")  # only Attack subclasses come out of the registry


def test_served_scores_are_the_clamped_score_or_the_raw_output() -> None:
    """A query attacker sees ``model.score`` when the model has one, else the raw output, as (N,)."""
    from training.gate.attacks.base import served_scores

    class Raw(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return 300.0 * x.flatten(1).mean(1, keepdim=True)  # (N, 1), outside [0, 100]

    class Served(Raw):
        def score(self, x: torch.Tensor) -> torch.Tensor:
            return self(x).clamp(0.0, 100.0)

    x = torch.full((2, 3, 4, 4), 0.5)
    assert served_scores(Raw(), x).tolist() == [150.0, 150.0]
    assert served_scores(Served(), x).tolist() == [100.0, 100.0]


def test_fit_images_cache_path(tmp_path: Path) -> None:
    from training.gate.attacks.base import FitImages

    assert FitImages(batches=lambda n: [], cache_key="k1").cache_path("uap") is None
    fit = FitImages(batches=lambda n: [], cache_key="k1", cache_dir=tmp_path)
    assert fit.cache_path("uap") == tmp_path / "uap-k1.pt"


def test_pgd_defaults_and_parameters_reach_the_ascent() -> None:
    """PGD's documented defaults (ε = 4/255, 10 steps of 2.5ε/10, L_mid, seed 0) and that an explicit
    α, objective and seed are the ones used; repr shows the seed."""
    pgd = PGD()
    assert (pgd.eps, pgd.steps, pgd.objective, pgd.seed) == (4 / 255, 10, "mid", 0)
    assert pgd.alpha == pytest.approx(2.5 * (4 / 255) / 10)
    other = PGD(eps=2 / 255, steps=3, alpha=0.003, objective="mse", seed=7)
    assert (other.eps, other.steps, other.alpha, other.objective, other.seed) == (2 / 255, 3, 0.003, "mse", 7)
    assert repr(other) == "PGD(eps=0.00784313725490196, steps=3, alpha=0.003, objective='mse', seed=7)"


def test_fgsm_is_one_step_of_alpha_with_the_paper_defaults() -> None:
    """FGSM: ε = 0.005 and α = 0.01 (Table S7), exactly one step; an explicit α is kept."""
    from training.gate.attacks.fgsm import FGSM

    fgsm = FGSM()
    assert (fgsm.eps, fgsm.steps, fgsm.alpha, fgsm.objective) == (0.005, 1, 0.01, "mid")
    assert FGSM(alpha=0.02).alpha == 0.02


def test_pgd_random_start_is_uniform_in_the_ball_around_x() -> None:
    x = torch.full((2, 3, 16, 16), 0.5)
    start = PGD(eps=8 / 255, seed=3).initial_point(x)
    delta = start - x
    assert float(delta.abs().max()) <= 8 / 255 + 1e-7
    assert float(delta.min()) < -6 / 255 and float(delta.max()) > 6 / 255  # both sides, near ±ε
    assert torch.equal(start, PGD(eps=8 / 255, seed=3).initial_point(x))


def test_intensity_sweep_rows_are_ifgsm_at_each_eps_and_steps(model: nn.Module, images: torch.Tensor) -> None:
    """Every row is I-FGSM with that row's ε, K and objective: its mean |Δscore| equals the one of a
    direct run; with MSE (zero gradient at x) nothing moves at all."""
    x = images[:4]
    clean = score_images(model, x)
    rows = intensity_sweep(model, x, eps_list=[1 / 255, 6 / 255], iters_list=[1, 4])
    for row in rows:
        adv = score_images(model, IFGSM(eps=row["eps"], steps=row["iters"], objective="mid")(model, x))
        assert row["mean_abs_delta"] == pytest.approx(float((adv - clean).abs().mean()), rel=1e-6)
    assert len({round(r["mean_abs_delta"], 6) for r in rows}) == 4
    flat = intensity_sweep(model, x, eps_list=[6 / 255], iters_list=[4], objective="mse")
    assert flat[0]["mean_abs_delta"] == 0.0 and flat[0]["mean_ssim"] == pytest.approx(1.0)


def test_square_fraction_follows_the_schedule() -> None:
    """p = p_init / divisor, the divisor from the iteration's position out of 10 000 (bounds inclusive),
    512 after the last bound."""
    from training.gate.attacks.square import square_fraction

    assert square_fraction(0.8, 0, 100) == 0.8
    assert square_fraction(0.8, 1, 1000) == 0.8  # position 10: still the first bound
    assert square_fraction(0.8, 2, 1000) == 0.8 / 2  # position 20
    assert square_fraction(0.8, 11, 1000) == 0.8 / 4  # position 110
    assert square_fraction(0.8, 16000, 20000) == 0.8 / 256  # position 8000: the last bound
    assert square_fraction(0.8, 16001, 20000) == 0.8 / 256  # position 8000.5, truncated to 8000
    assert square_fraction(0.8, 16002, 20000) == 0.8 / 512  # position 8001: past it
    assert square_fraction(0.8, 9, 10) == 0.8 / 512


def test_square_defaults_and_parameter_bounds() -> None:
    """Square's documented defaults, the smallest query budget (clean score + initial point) and
    p_init in (0, 1]."""
    from training.gate.attacks.square import SquareAttack

    sq = SquareAttack()
    assert (sq.eps, sq.n_queries, sq.p_init, sq.objective, sq.seed) == (4 / 255, 200, 0.05, "mid", 0)
    assert SquareAttack(n_queries=2).n_queries == 2
    assert SquareAttack(p_init=1.0).p_init == 1.0
    for kwargs in ({"n_queries": 1}, {"p_init": 0.0}, {"p_init": 1.5}):
        with pytest.raises(ValueError):
            SquareAttack(**kwargs)


def test_square_signs_are_float_plus_or_minus_one() -> None:
    from training.gate.attacks.square import SquareAttack

    signs = SquareAttack()._signs((4, 3, 1, 16), torch.Generator().manual_seed(0), torch.device("cpu"))
    assert signs.dtype == torch.float32 and signs.shape == (4, 3, 1, 16)
    assert set(signs.unique().tolist()) == {-1.0, 1.0}


def test_ifgsm_step_size_defaults_to_two_and_a_half_eps_over_steps() -> None:
    ifgsm = IFGSM()
    assert (ifgsm.eps, ifgsm.steps) == (0.005, 10)
    assert ifgsm.alpha == pytest.approx(2.5 * 0.005 / 10)
    assert IFGSM(eps=0.01, steps=4).alpha == pytest.approx(2.5 * 0.01 / 4)
    assert IFGSM(eps=0.01, steps=4, alpha=0.003).alpha == 0.003
    with pytest.raises(ValueError):
        IFGSM(alpha=0.0)  # a zero step would deliver the clean image as an "attack"


def test_l_mid_switches_at_the_models_own_score_midpoint() -> None:
    """On a model scoring on [0, 10] the L_mid switch is 5, not 50: a score of 7 is pushed down."""

    class Tenths(nn.Module):
        preprocess_cfg = PreprocessConfig(score_min=0.0, score_max=10.0)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return 10.0 * x.flatten(1).mean(1)

    model = Tenths()
    x = torch.full((2, 3, 8, 8), 0.7)
    x[1] = 0.3  # score 3: below the midpoint, pushed up
    adv = model(IFGSM(eps=4 / 255, steps=2)(model, x))
    assert float(adv[0]) < 7.0 - 0.1 and float(adv[1]) > 3.0 + 0.1


def test_l_mid_switches_at_50_by_default() -> None:
    """L_mid (Eq. S20) on [0, 100]: a clean score of 50 is pushed up, 50.5 down, by default."""
    pred, y = torch.tensor([10.0, 10.0]), torch.tensor([50.0, 50.5])
    assert l_mid(pred, y).tolist() == [10.0, -10.0]
    assert make_objective("mid")(pred, y).tolist() == [10.0, -10.0]
