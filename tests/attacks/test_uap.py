"""The UAP's parts on analytic models (exact values, milliseconds): tiling, the stored perturbation,
the fitting objectives and Adam loop, the cache the gate reuses, save / load. Its transfer strength
from a trained surrogate: test_attacks.py."""

from __future__ import annotations

import pickle
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from tests.attacks.attack_fixtures import PatternModel, Probe, grid_images
from tests.iqa_fixtures import TinyIQA
from training.gate.attacks import UAP
from training.gate.attacks.base import FitImages
from training.gate.attacks.uap import tile_to

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_tile_to_repeats_the_pattern_periodically_and_crops() -> None:
    for shape in ((3, 2, 3), (3, 4, 2), (3, 2, 2)):  # wide, tall, square
        p = torch.arange(float(shape[0] * shape[1] * shape[2])).view(shape)
        out = tile_to(p, 5, 7)
        assert out.shape == (3, 5, 7)
        rows = torch.arange(5) % p.shape[1]
        cols = torch.arange(7) % p.shape[2]
        assert torch.equal(out, p[:, rows][:, :, cols])


def test_uap_defaults_and_stored_perturbation() -> None:
    uap = UAP()
    assert (uap.scale, uap.eps, uap.size, uap.objective) == (0.04, 0.04, 224, "up")
    assert (uap.epochs, uap.lr, uap.batch_size, uap.seed) == (20, 0.05, 16, 0)
    assert "fitted=False" in repr(uap)
    other = UAP(scale=0.02, objective="down", seed=5)
    assert (other.eps, other.objective, other.seed) == (0.02, "down", 5)
    p = torch.tensor([-3.0, -0.5, 0.25, 3.0], dtype=torch.float64).view(1, 2, 2).repeat(3, 1, 1)
    given = UAP(perturbation=p)
    assert given.perturbation is not None and given.perturbation.dtype == torch.float32
    assert given.perturbation[0].flatten().tolist() == [-1.0, -0.5, 0.25, 1.0]  # clamped to [−1, 1]
    assert "fitted=True" in repr(given)
    for bad in (torch.zeros(1, 4, 4), torch.zeros(3, 4), torch.zeros(2, 3, 4, 4)):
        with pytest.raises(ValueError, match="3 x S x S"):
            UAP(perturbation=bad)


def test_uap_adds_the_scaled_tiled_perturbation_and_stays_in_the_box() -> None:
    p = torch.tensor([1.0, -1.0, 0.5, 0.0]).view(1, 2, 2).repeat(3, 1, 1)
    uap = UAP(scale=0.04, perturbation=p)
    x = grid_images(2, size=6, seed=3)
    assert torch.allclose(uap.perturb(PatternModel(), x), x + 0.04 * tile_to(p, 6, 6), atol=1e-7)
    edges = torch.zeros(2, 3, 6, 6)
    edges[1] = 1.0
    out = uap.perturb(PatternModel(), edges)
    assert float(out.min()) == 0.0 and float(out.max()) == 1.0


def test_fitting_objectives_up_down_and_l_mid_at_the_models_midpoint() -> None:
    class Tenths(torch.nn.Module):
        preprocess_cfg = PatternModel(score_range=(0.0, 10.0)).preprocess_cfg

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return 10.0 * x.flatten(1).mean(1)

    model = Tenths()
    x = torch.full((2, 3, 4, 4), 0.3)
    x[1] = 0.7  # scores 3 and 7 on [0, 10]: L_mid pushes 3 up and 7 down (midpoint 5)
    y = model(x)
    assert float(UAP(objective="up")._loss(model, x, y)) == pytest.approx(-5.0)
    assert float(UAP(objective="down")._loss(model, x, y)) == pytest.approx(5.0)
    assert float(UAP(objective="mid")._loss(model, x, y)) == pytest.approx(2.0)  # −mean(3, −7)


def test_zero_epochs_leave_the_seeded_initial_point() -> None:
    """p starts at U(−1e-3, 1e-3) from the UAP's own seeded generator (not the global RNG)."""
    x = grid_images(2, seed=1)
    torch.manual_seed(0)
    p = UAP(size=16, epochs=0, seed=3).fit(PatternModel(), x).perturbation
    torch.manual_seed(1)
    assert torch.equal(UAP(size=16, epochs=0, seed=3).fit(PatternModel(), x).perturbation, p)
    gen = torch.Generator().manual_seed(3)
    assert torch.equal(p, (torch.rand(3, 16, 16, generator=gen) * 2 - 1) * 1e-3)
    assert not torch.equal(UAP(size=16, epochs=0, seed=4).fit(PatternModel(), x).perturbation, p)


@pytest.mark.parametrize(("objective", "sign"), [("up", 1.0), ("down", -1.0)])
def test_fitting_drives_p_to_the_clamped_gradient_sign(objective: str, sign: float) -> None:
    """On f = b + g·mean(w·x) the gradient w.r.t. p is ±w everywhere: Adam with a large step drives
    p past ±1 at once, and the per-step clamp holds it at exactly sign·w (the applied UAP then moves
    the score that way by the full scale)."""
    model = PatternModel(bias=50.0, gain=100.0)
    x = grid_images(4, seed=2)
    uap = UAP(model, size=16, objective=objective, epochs=3, lr=5.0).fit(images=x)
    assert uap.perturbation is not None
    assert torch.equal(uap.perturbation, sign * model.w[0])
    with torch.no_grad():
        gained = model(uap.perturb(model, x)) - model(x)
    assert torch.allclose(gained, torch.full((4,), sign * 100.0 * 0.04), atol=1e-4)


def test_fitting_walks_the_batches_and_keeps_the_model_inputs_in_the_box() -> None:
    """``epochs`` passes over batches of ``batch_size``; every image the surrogate is shown while fitting
    is x + scale·p clamped to [0, 1] (images at 0 and 1 included)."""
    probe = Probe(PatternModel(), keep_inputs=True)
    x = grid_images(6, seed=3)
    x[0], x[1] = 0.0, 1.0
    UAP(size=16, epochs=2, batch_size=2, lr=0.5).fit(probe, x)
    assert sum(probe.grad_enabled) == 2 * 3  # 2 epochs × 3 batches of 2
    assert probe.calls == 2 * 2 * 3  # plus the clean prediction of each batch
    seen = torch.cat(probe.gradient_inputs)
    assert float(seen.min()) == 0.0 and float(seen.max()) == 1.0
    moved = seen[2:6] - x[2:6]
    assert 0.0 < float(moved.abs().max()) <= 0.04 + 1e-6


def test_fit_needs_a_surrogate_and_images_and_takes_float64_batches() -> None:
    x = grid_images(2, seed=4)
    with pytest.raises(ValueError, match="surrogate"):
        UAP(size=16).fit(images=x)
    with pytest.raises(ValueError, match="images"):
        UAP(PatternModel(), size=16).fit()
    given = UAP(size=16, epochs=1).fit(PatternModel(), x)  # the surrogate passed to fit is used
    assert given.perturbation is not None
    torch.manual_seed(0)
    conv = TinyIQA()  # float32 weights: the fitting batches are converted to float32 first
    as64 = UAP(size=16, epochs=1).fit(conv, x.double()).perturbation
    assert torch.equal(as64, UAP(size=16, epochs=1).fit(conv, x).perturbation)


def test_prepare_fits_caches_in_a_new_folder_and_reuses(tmp_path: Path) -> None:
    x = grid_images(4, seed=5)
    folder = tmp_path / "cache" / "uap"  # two levels that do not exist yet
    fit = FitImages(batches=lambda n: list(torch.split(x, n)), cache_key="k1", cache_dir=folder)
    first = UAP(PatternModel(), size=16, epochs=1)
    assert first.prepare(fit) == {"uap_cache": str(folder / "uap-k1.pt"), "uap_fitted": True}
    again = UAP(PatternModel(), size=16, epochs=1, seed=9)
    assert again.prepare(fit) == {"uap_cache": str(folder / "uap-k1.pt"), "uap_fitted": False}
    assert again.perturbation is not None and first.perturbation is not None
    assert torch.equal(again.perturbation, first.perturbation)
    uncached = FitImages(batches=lambda n: list(torch.split(x, n)), cache_key="k1")
    assert UAP(PatternModel(), size=16, epochs=1).prepare(uncached) == {"uap_cache": None, "uap_fitted": True}


@dataclass
class _NotATensor:
    payload: str


def test_saved_file_holds_p_scale_and_objective_and_loads_weights_only(tmp_path: Path) -> None:
    p = torch.linspace(-1, 1, 12).view(3, 2, 2)
    path = tmp_path / "uap.pt"
    UAP(scale=0.03, objective="down", perturbation=p).save(path)
    state = torch.load(path, weights_only=True)
    assert set(state) == {"perturbation", "scale", "objective"}
    assert torch.equal(state["perturbation"], p) and (state["scale"], state["objective"]) == (0.03, "down")
    rogue = tmp_path / "rogue.pt"
    torch.save({"perturbation": p, "note": _NotATensor("code")}, rogue)
    with pytest.raises(pickle.UnpicklingError):
        UAP(path=rogue)  # a file that is not plain tensors and numbers is refused, never unpickled
