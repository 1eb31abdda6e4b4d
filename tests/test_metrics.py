"""IQA metrics against hand-computed values (and the recorded fallback of a failed logistic fit), the R
robustness (its orientation checked at the production call site, its zero-change floor counted) and
the exact vs finite-difference gradient norms."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from tests.iqa_fixtures import degraded_test_set, small_trained_model
from training.gate.attacks import Attack
from training.gate.grad_norms import grad_norm_fd, grad_norm_l1, grad_norm_report
from training.gate.metrics import attack_metrics, r_floor_hits, r_robustness, relative_rmse
from training.metrics import (
    fit_logistic_4param,
    iqa_metrics,
    krocc,
    logistic_4param,
    plcc,
    plcc_logistic,
    rmse,
    srocc,
)
from training.preprocessing import PreprocessConfig

pytestmark = pytest.mark.usefixtures("one_torch_thread")


# --- accuracy metrics on tiny arrays ----------------------------------------------------------


def test_rmse_hand_value() -> None:
    assert rmse([1, 2, 3], [1, 2, 5]) == pytest.approx(math.sqrt(4 / 3))
    assert rmse(torch.tensor([0.0, 10.0]), np.array([0.0, 10.0])) == 0.0


def test_srocc_hand_value() -> None:
    # ranks differ by d = (0, 1, −1, 0): 1 − 6·2 / (4·15) = 0.8 (Eq. S9)
    assert srocc([1, 2, 3, 4], [1, 3, 2, 4]) == pytest.approx(0.8)
    assert srocc([1, 2, 3], [30, 20, 10]) == pytest.approx(-1.0)


def test_krocc_hand_value() -> None:
    # 6 pairs, one discordant (2↔3): (5 − 1) / 6 (Eq. S10)
    assert krocc([1, 2, 3, 4], [1, 3, 2, 4]) == pytest.approx(4 / 6)


def test_plcc_hand_value() -> None:
    # f − f̄ = (−1, 0, 1), y − ȳ = (−4/3, −1/3, 5/3): cov 3, var 2 and 42/9 → 9/√84 (Eq. S11)
    assert plcc([1, 2, 3], [1, 2, 4]) == pytest.approx(9 / math.sqrt(84))


def test_plcc_after_logistic_fit() -> None:
    pred = np.linspace(-5, 5, 25)
    target = logistic_4param(pred, 90.0, 10.0, 0.5, 1.5)
    assert plcc(pred, target) < 0.99
    assert plcc(pred, target, fit_logistic=True) == pytest.approx(1.0, abs=1e-6)
    b1, b2, b3, b4 = fit_logistic_4param(pred, target)
    assert (b1, b2, b3, abs(b4)) == pytest.approx((90.0, 10.0, 0.5, 1.5), rel=1e-3)


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # scipy / numpy overflow inside the failing fit
def test_a_failed_logistic_fit_is_recorded_not_silent() -> None:
    """Finite predictions whose spread overflows the fit's initialisation (std of 1e160-sized values)
    make the 4-parameter fit raise: PLCC falls back to raw Pearson and says so."""
    pred = np.array([1.0, 2.0, 3.0, 5.0, 4.0, 6.0]) * 1e160
    target = np.array([10.0, 20.0, 35.0, 40.0, 50.0, 60.0])
    with pytest.raises(ValueError):
        fit_logistic_4param(pred, target)
    raw = plcc(pred / 1e160, target)
    assert plcc_logistic(pred, target) == (pytest.approx(raw), True)
    assert plcc(pred, target, fit_logistic=True) == pytest.approx(raw)
    out = iqa_metrics(pred, target, fit_logistic=True)
    assert out["plcc_logistic_failed"] is True and out["plcc"] == pytest.approx(raw)
    nan = iqa_metrics([1.0, 2.0, float("nan"), 4.0, 5.0], [1.0, 2.0, 3.0, 4.0, 5.0], fit_logistic=True)
    assert nan["plcc_logistic_failed"] is True
    good = iqa_metrics(np.linspace(-5, 5, 25), logistic_4param(np.linspace(-5, 5, 25), 90, 10, 0.5, 1.5),
                       fit_logistic=True)
    assert good["plcc_logistic_failed"] is False and good["plcc"] == pytest.approx(1.0, abs=1e-6)
    assert "plcc_logistic_failed" not in iqa_metrics(pred, target)  # no fit, nothing to record


def test_iqa_metrics_keys_and_length_check() -> None:
    out = iqa_metrics([1, 2, 3, 4], [1, 3, 2, 4])
    assert set(out) == {"rmse", "srocc", "plcc", "krocc"}
    with pytest.raises(ValueError, match="length mismatch"):
        rmse([1, 2], [1, 2, 3])


# --- R robustness -----------------------------------------------------------------------------

CLEAN = [20.0, 90.0]
ADV = [30.0, 89.0]
# Eq. S12 with β1 = 100, β2 = 0, log10:
#   image 1: max(100 − 20, 20 − 0) / |20 − 30| = 80 / 10 → log10 8
#   image 2: max(100 − 90, 90 − 0) / |90 − 89| = 90 / 1 → log10 90
R_HAND = (math.log10(8) + math.log10(90)) / 2  # 1.428666...


def test_r_robustness_hand_value() -> None:
    assert r_robustness(CLEAN, ADV) == pytest.approx(R_HAND)
    assert pytest.approx(1.4286662, abs=1e-6) == R_HAND


class _Mean(nn.Module):
    """f(crop) = 100 · mean(crop): scores on [0, 100] that the test can compute by hand."""

    preprocess_cfg = PreprocessConfig(short_side=32, max_long_side=32, crop_size=32, num_eval_crops=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 100.0 * x.flatten(1).mean(1)


class _Shift(Attack):
    """Moves a dark image up by 26 levels and a bright one down by 3: known, unequal score changes."""

    name = "shift-for-tests"

    def __init__(self, **_: object) -> None:
        super().__init__(None)

    def perturb(self, model: nn.Module, x: torch.Tensor) -> torch.Tensor:
        return torch.where(x < 0.5, x + 26 / 255, x - 3 / 255)


def test_an_attack_section_computes_r_with_the_clean_score_in_the_numerator(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The production call site (attack_runs → attack_metrics → r_robustness), not a helper: a section
    run on a model with known clean / attacked scores gives Eq. S12 with f(x) (clean) in the
    numerator, and the relative RMSE in units of the *clean* spread. Swapping the clean and attacked
    scores anywhere on that path changes both."""
    import training.gate.attack_runs as attack_runs
    from training.gate.data import EvalData
    from training.gate.evaluation import evaluate_model

    monkeypatch.setattr(attack_runs, "create_attack", lambda kind, **params: _Shift())
    images = [torch.full((3, 32, 32), 51 / 255), torch.full((3, 32, 32), 230 / 255)]
    data = EvalData(images, np.array([25.0, 85.0]), ["dark.png", "bright.png"])
    cfg = {
        "num_images": 2, "batch_size": 2, "scoring": {"attack_crops": 1},
        "grad_norm": {"enabled": False}, "sweep": {"enabled": False},
        "attacks": {"shift": {"attack": "fgsm", "params": {}}},
    }
    entry = evaluate_model(_Mean(), data, cfg)["attacks"]["shift"]
    assert entry["status"] == "ok", entry.get("reason")
    clean, adv = [20.0, 100 * 230 / 255], [100 * 77 / 255, 100 * 227 / 255]
    np.testing.assert_allclose(entry["per_image"]["clean"], clean, rtol=1e-5)
    np.testing.assert_allclose(entry["per_image"]["adv"], adv, rtol=1e-5)
    # Eq. S12: (log10(max(100 − 20, 20) / |20 − 30.2|) + log10(max(9.8, 90.2) / |90.2 − 89.0|)) / 2
    right = (math.log10(80 / (adv[0] - 20)) + math.log10(clean[1] / (clean[1] - adv[1]))) / 2
    swapped = (math.log10((100 - adv[0]) / (adv[0] - 20)) + math.log10(adv[1] / (clean[1] - adv[1]))) / 2
    metrics = entry["metrics"]
    assert metrics["r"] == pytest.approx(right, rel=1e-5)
    assert abs(right - swapped) > 0.01 and metrics["r"] != pytest.approx(swapped, rel=1e-3)
    rmse_before_after = math.sqrt(((adv[0] - clean[0]) ** 2 + (adv[1] - clean[1]) ** 2) / 2)
    assert metrics["rel_rmse"] == pytest.approx(rmse_before_after / np.std(clean), rel=1e-5)
    assert metrics["mos_vs_adv"]["rmse"] == pytest.approx(rmse(adv, [25.0, 85.0]), rel=1e-5)
    assert metrics["mos_vs_clean"]["rmse"] == pytest.approx(rmse(clean, [25.0, 85.0]), rel=1e-5)


def test_images_on_r_s_zero_change_floor_are_counted() -> None:
    """An unmoved image adds log10(room / 1e-4) ≈ 5-6 to R: one of four lifts a mean of ~1 by ~1.3,
    so attack_metrics reports how many images sat on the floor."""
    clean, adv = [20.0, 50.0, 70.0, 90.0], [30.0, 50.0, 60.0, 80.0]  # the second image did not move
    assert r_floor_hits(clean, adv) == 1
    assert r_floor_hits(clean, [30.0, 50.00005, 60.0, 80.0]) == 1  # below 1e-4 counts too
    assert r_floor_hits(clean, [30.0, 50.001, 60.0, 80.0]) == 0
    moved = [20.0, 70.0, 90.0], [30.0, 60.0, 80.0]
    lift = r_robustness(clean, adv) - r_robustness(*moved) * 3 / 4
    assert lift == pytest.approx(math.log10(50 / 1e-4) / 4)
    out = attack_metrics([10.0, 40.0, 60.0, 90.0], clean, adv)
    assert out["r_floor_hits"] == 1
    assert attack_metrics([10.0, 40.0], [20.0, 50.0], [20.0, 50.0])["r_floor_hits"] == 2


def test_r_robustness_zero_change_floor_and_monotonicity() -> None:
    assert r_robustness([50.0], [50.0]) == pytest.approx(math.log10(50 / 1e-4))
    assert math.isfinite(r_robustness([0.0, 100.0], [0.0, 100.0]))
    assert r_robustness([40.0], [45.0]) > r_robustness([40.0], [60.0])  # smaller change: more robust
    with pytest.raises(ValueError):
        r_robustness([1.0], [2.0], beta1=0.0, beta2=0.0)


def test_attack_metrics_both_ways() -> None:
    mos = [10.0, 40.0, 60.0, 90.0]
    clean = [15.0, 35.0, 65.0, 85.0]
    adv = [60.0, 50.0, 30.0, 20.0]  # L_mid-like: order reversed
    out = attack_metrics(mos, clean, adv)
    assert out["mos_vs_adv"]["srocc"] == pytest.approx(-1.0)
    assert out["clean_vs_adv"]["srocc"] == pytest.approx(-1.0)
    assert out["mos_vs_clean"]["srocc"] == pytest.approx(1.0)
    assert out["mos_vs_adv"]["rmse"] == pytest.approx(rmse(adv, mos))
    assert out["clean_vs_adv"]["rmse"] == pytest.approx(rmse(adv, clean))
    assert out["r"] == pytest.approx(r_robustness(clean, adv))
    assert out["mean_abs_delta"] == pytest.approx(np.mean(np.abs(np.subtract(adv, clean))))
    assert out["rel_rmse"] == pytest.approx(relative_rmse(clean, adv))


def test_relative_rmse_hand_value_and_blind_to_output_scale() -> None:
    clean, adv = np.array([0.0, 2.0]), np.array([1.0, 2.0])  # std(clean) = 1, RMSE = sqrt(1/2)
    assert relative_rmse(clean, adv) == pytest.approx(math.sqrt(0.5))
    # A model that squeezes its scores 6x around 45 moves 6x fewer raw points, and is no more robust.
    squeezed_clean, squeezed_adv = 45 + (clean - 1) / 6, 45 + (adv - 1) / 6
    assert rmse(squeezed_adv, squeezed_clean) == pytest.approx(rmse(adv, clean) / 6)
    assert relative_rmse(squeezed_clean, squeezed_adv) == pytest.approx(relative_rmse(clean, adv))
    assert math.isnan(relative_rmse([50.0, 50.0], [49.0, 51.0]))


# --- gradient norms ---------------------------------------------------------------------------


class _Linear(nn.Module):
    """f(x) = wᵀx + b, whose input gradient is w everywhere: ‖∇ₓf‖₁ = ‖w‖₁."""

    def __init__(self, shape: tuple[int, int, int], seed: int = 0) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        self.w = nn.Parameter(torch.randn(shape, generator=gen))
        self.b = nn.Parameter(torch.tensor(50.0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x * self.w).flatten(1).sum(1) + self.b


def test_grad_norms_exact_on_linear_model() -> None:
    model = _Linear((3, 8, 8))
    x = 0.1 + 0.8 * torch.rand(5, 3, 8, 8, generator=torch.Generator().manual_seed(1))  # x ± h in [0, 1]
    expected = float(model.w.detach().abs().sum())
    exact = grad_norm_l1(model, x)
    fd = grad_norm_fd(model, x, h=0.01)
    assert torch.allclose(exact, torch.full((5,), expected), rtol=1e-5)
    assert torch.allclose(fd, torch.full((5,), expected), rtol=1e-3)
    assert model.w.grad is None and model.b.grad is None


def test_grad_norm_fd_clamp_at_box_edge() -> None:
    """At x = 1 the positive part of the step is clamped away, so FD underestimates: documented."""
    model = _Linear((3, 4, 4))
    x = torch.ones(1, 3, 4, 4)
    assert float(grad_norm_fd(model, x, h=0.01)[0]) < float(grad_norm_l1(model, x)[0])


def test_grad_norm_report_small_model() -> None:
    model = small_trained_model(0)
    model.train()
    x, _ = degraded_test_set(32, 64)
    loader = [(x[:16], None), (x[16:], None)]
    report = grad_norm_report(model, loader, h=1e-3)
    assert model.training  # mode put back
    model.eval()
    assert len(report["exact"]) == len(report["fd"]) == 32
    # At h = 1e-3 the finite difference tracks the exact norm of the ReLU net closely (at NT's
    # h = 0.01 this tiny, very steep model is already non-linear over the step: ρ ≈ 0.5).
    assert report["pearson"] > 0.9 and report["spearman"] > 0.9
    assert report["median_exact"] == pytest.approx(float(np.median(report["exact"])))
    assert report["median_exact"] > 0
    assert all(p.grad is None for p in model.parameters())
    from_tensor = grad_norm_report(model, x, h=1e-3, batch_size=8)
    assert from_tensor["exact"] == pytest.approx(report["exact"], rel=1e-4)


def test_fd_check_over_steps_agrees_with_single_step_estimates() -> None:
    """fd_check reports every step h (training h first in value order), each equal to grad_norm_fd at
    that h; the estimate of a non-linear net approaches the exact norm as h shrinks."""
    model = small_trained_model(0)
    x, _ = degraded_test_set(16, 64)
    report = grad_norm_report(model, x, h=0.01, batch_size=8, check_hs=[1e-4, 1e-3, 0.01])
    rows = report["fd_check"]
    assert [row["h"] for row in rows] == [1e-4, 1e-3, 0.01]
    for row in rows:
        single = grad_norm_fd(model, x, h=row["h"]).numpy()
        assert row["median_fd"] == pytest.approx(float(np.median(single)), rel=1e-4)
        assert row["median_fd_over_exact"] == pytest.approx(row["median_fd"] / report["median_exact"])
    assert rows[-1]["median_fd"] == pytest.approx(report["median_fd"])
    assert rows[0]["pearson"] > 0.95
    assert abs(rows[0]["median_fd_over_exact"] - 1) < abs(rows[-1]["median_fd_over_exact"] - 1)
    assert "fd_check" not in grad_norm_report(model, x, h=0.01, batch_size=8)


# --- mutation testing (make mutation, docs/MUTATION.md): the logistic map's values and guards -----


def test_logistic_4param_hand_values() -> None:
    """Eq. 5 of Zhang et al. at known points, with β2 ≠ 0, β3 ≠ 0 and |β4| ≠ 1 so that every term
    counts: the midpoint (β1 + β2)/2 at f = β3, β1 far above β3, β2 far below, and one slope point."""
    b1, b2, b3, b4 = 90.0, 10.0, 2.0, 4.0
    f = np.array([b3, b3 + b4, b3 + 100 * b4, b3 - 100 * b4])
    want = [50.0, 10.0 + 80.0 / (1.0 + math.exp(-1.0)), 90.0, 10.0]
    assert logistic_4param(f, b1, b2, b3, b4) == pytest.approx(want, abs=1e-9)
    assert logistic_4param(f, b1, b2, b3, -b4) == pytest.approx(want, abs=1e-9)  # |β4|
    assert logistic_4param(np.array([b3]), b1, b2, b3, 0.0) == pytest.approx([50.0])  # β4 = 0 floored


def test_logistic_4param_never_overflows_or_underflows() -> None:
    """The exponent is clipped to ±500, so predictions millions of slopes away from β3 give β1 / β2
    without a floating-point overflow (exp > 1e308) or underflow (exp < 1e-308)."""
    f = np.array([-1e9, 1e9])
    with np.errstate(all="raise"):
        out = logistic_4param(f, 90.0, 10.0, 0.0, 1.0)
    assert out == pytest.approx([10.0, 90.0])


def test_r_uses_beta2_and_the_floor_is_strict() -> None:
    """β2 enters the numerator as f − β2: clean 70 with β = (100, 20) allows max(30, 50) = 50, so a
    change of 10 gives log10 5, and attack_metrics passes β2 through. The floor counts changes
    strictly below ``min_change``; fit_logistic is off unless asked for."""
    assert r_robustness([70.0], [60.0], beta1=100.0, beta2=20.0) == pytest.approx(math.log10(5.0))
    out = attack_metrics([65.0, 30.0], [70.0, 40.0], [60.0, 45.0], beta1=100.0, beta2=20.0)
    assert out["r"] == pytest.approx(r_robustness([70.0, 40.0], [60.0, 45.0], beta1=100.0, beta2=20.0))
    assert out["r"] != pytest.approx(r_robustness([70.0, 40.0], [60.0, 45.0]))
    assert r_floor_hits([50.0, 50.0], [50.5, 50.25], min_change=0.5) == 1
    assert "plcc_logistic_failed" not in out["mos_vs_adv"]


def test_iqa_metrics_are_the_single_metrics_in_float64() -> None:
    """Every entry of iqa_metrics is its own metric's value; inputs of any shape and dtype are
    flattened and taken in float64, so an (N, 1) float32 tensor whose squares overflow float32 works."""
    pred, target = [1.0, 3.0, 2.0, 5.0, 4.0], [1.5, 2.0, 3.0, 4.5, 4.0]
    out = iqa_metrics(pred, target)
    assert out == {
        "rmse": rmse(pred, target), "srocc": srocc(pred, target), "plcc": plcc(pred, target),
        "krocc": krocc(pred, target),
    }
    big = torch.tensor([[1e20], [0.0]], dtype=torch.float32)
    assert rmse(big, torch.zeros(2)) == pytest.approx(1e20 / math.sqrt(2), rel=1e-6)
