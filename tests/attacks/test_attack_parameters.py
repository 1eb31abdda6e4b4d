"""Parameters, defaults and small helpers of the attacks, pinned by mutation testing (make mutation,
docs/MUTATION.md): registry, base helpers, PGD, sweep, Square, L_mid."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

import pytest
import torch
from torch import nn

from training.gate.attacks import (
    Attack,
    attack_class,
    create_attack,
    intensity_sweep,
    list_attacks,
    register_attack,
    score_images,
)
from training.gate.attacks.fgsm import IFGSM
from training.gate.attacks.objectives import l_mid, make_objective
from training.gate.attacks.pgd import PGD
from training.preprocessing import PreprocessConfig

pytestmark = pytest.mark.usefixtures("one_torch_thread")


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
