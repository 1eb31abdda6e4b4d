"""The masked attacks, Korhonen (Sobel texture mask) and IOI (spectral filter and variation mask),
checked value by value against SciPy / NumPy references and analytic models (milliseconds). Their
strength on a trained model: test_attacks.py and test_attacks_set_level.py."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage

from tests.attacks.attack_fixtures import PatternModel, grid_images
from tests.iqa_fixtures import synthetic_images
from training.gate.attacks import create_attack
from training.gate.attacks.ioi import IOI, dominant_spectrum, remove_dominant, variation_mask
from training.gate.attacks.korhonen import Korhonen, texture_mask
from training.gate.attacks.objectives import make_objective
from training.gate.tensors import input_gradient

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def reference_texture_mask(x: torch.Tensor) -> np.ndarray:
    """SciPy: Sobel magnitude of the BT.601 luma (edges replicated), 3×3 box mean, ÷ per-image max."""
    out = []
    for image in x.double().numpy():
        luma = 0.299 * image[0] + 0.587 * image[1] + 0.114 * image[2]
        gx = ndimage.sobel(luma, axis=1, mode="nearest")
        gy = ndimage.sobel(luma, axis=0, mode="nearest")
        magnitude = ndimage.uniform_filter(np.hypot(gx, gy), size=3, mode="nearest")
        out.append(magnitude / magnitude.max())
    return np.stack(out)[:, None]


def test_texture_mask_is_the_normalised_smoothed_sobel_magnitude_of_the_luma() -> None:
    x = synthetic_images(2, 24, seed=3)
    x[1] = 0.4 + 0.05 * x[1]  # low contrast: its peak magnitude is far below 1, still normalised to 1
    mask = texture_mask(x)
    assert mask.shape == (2, 1, 24, 24)
    assert np.allclose(mask.numpy(), reference_texture_mask(x), atol=1e-5)
    assert mask.flatten(1).amax(1).tolist() == pytest.approx([1.0, 1.0])


def test_korhonen_defaults_and_parameter_bounds() -> None:
    attack = Korhonen()
    assert (attack.eps, attack.lr, attack.steps, attack.objective) == (4 / 255, 0.2, 10, "mid")
    assert Korhonen(lr=1e-3, steps=1).steps == 1
    for kwargs in ({"lr": 0.0}, {"steps": 0}):
        with pytest.raises(ValueError):
            Korhonen(**kwargs)
    assert repr(Korhonen()).endswith(", white-box)")
    assert repr(Korhonen(surrogate=PatternModel())).endswith(", surrogate)")


def test_korhonen_steps_are_lr_eps_times_the_mask_toward_l_mid_at_the_models_midpoint() -> None:
    """On f = g·mean(x) the sign of the gradient is fixed, so K masked steps of lr·ε add
    s·min(K·lr·ε·mask, ε): flat regions (mask 0) stay put, the edge reaches the ε boundary. The L_mid
    switch is the model's own midpoint (5 on [0, 10]): a score of 3 goes up, 7 goes down."""
    model = PatternModel(bias=0.0, gain=10.0, pattern=torch.ones(1, 3, 16, 16), score_range=(0.0, 10.0))
    x = torch.full((2, 3, 16, 16), 0.25)
    x[:, :, :, 8:] = 0.35  # a vertical edge in the middle, flat on both sides
    x[1] += 0.4
    with torch.no_grad():
        assert model(x).tolist() == pytest.approx([3.0, 7.0])
    eps, steps = 4 / 255, 3
    out = Korhonen(eps=eps, lr=0.2, steps=steps).perturb(model, x)
    mask = texture_mask(x)
    direction = torch.tensor([1.0, -1.0]).view(2, 1, 1, 1)
    expected = x + direction * torch.clamp(steps * 0.2 * eps * mask, max=eps)
    assert torch.allclose(out, expected, atol=1e-6)
    assert float((out - x)[..., :, :4].abs().max()) == 0.0  # far from the edge: untouched
    assert float((out - x)[..., :, 7:9].abs().min()) > 0.5 * eps  # at the edge: most of the budget


def reference_variation(x: torch.Tensor) -> torch.Tensor:
    """cv / max cv per image: the 3×3 standard deviation over the 3×3 mean (a zero mean counts as 1),
    edges replicated (SciPy)."""
    out = []
    for image in x.double().numpy():
        mean = ndimage.uniform_filter(image, size=(1, 3, 3), mode="nearest")
        square = ndimage.uniform_filter(image**2, size=(1, 3, 3), mode="nearest")
        cv = np.sqrt(np.clip(square - mean**2, 0, None)) / np.where(mean > 0, mean, 1.0)
        out.append(cv / cv.max())
    return torch.from_numpy(np.stack(out))


def test_variation_mask_matches_the_local_coefficient_of_variation() -> None:
    x = synthetic_images(2, 24, seed=5)
    x[0, :, :6, :6] = 0.0  # black: zero mean and zero variance, masked out (not 0/0)
    reference = reference_variation(x)
    mask = variation_mask(x, floor=0.0)
    assert torch.isfinite(mask).all()
    assert torch.allclose(mask.double(), reference.sqrt(), atol=2e-3)
    assert float(mask[0, :, :4, :4].abs().max()) == 0.0
    cut = variation_mask(x, floor=0.3)
    assert bool((cut[reference < 0.3 - 1e-3] == 0).all())
    kept = reference > 0.3 + 1e-3
    assert torch.allclose(cut[kept].double(), reference[kept].sqrt(), atol=2e-3)


def test_variation_mask_keeps_a_value_equal_to_the_floor() -> None:
    """Values under the floor are zeroed; one exactly at it is kept (the same torch ops give it)."""
    x = synthetic_images(1, 16, seed=6)
    padded = torch.nn.functional.pad(x, (1, 1, 1, 1), mode="replicate")
    mean = torch.nn.functional.avg_pool2d(padded, 3, stride=1)
    var = (torch.nn.functional.avg_pool2d(padded.pow(2), 3, stride=1) - mean.pow(2)).clamp_min(0.0)
    cv = var.sqrt() / torch.where(mean > 0, mean, torch.ones_like(mean))
    cv = cv / cv.flatten(1).amax(1).view(-1, 1, 1, 1)
    at = float(cv[0, 1, 8, 8])
    assert 0.0 < at < 1.0
    assert float(variation_mask(x, floor=at)[0, 1, 8, 8]) == pytest.approx(at**0.5)


def test_dominant_spectrum_keeps_at_least_the_mean_and_is_boolean() -> None:
    x = synthetic_images(2, 16, seed=7)
    tiny = dominant_spectrum(x, 1e-6)
    assert tiny.dtype == torch.bool and dominant_spectrum(x, 0.0).dtype == torch.bool
    assert tiny.flatten(2).sum(-1).tolist() == [[1, 1, 1], [1, 1, 1]]  # the mean alone (self-conjugate)
    assert bool(tiny[..., 0, 0].all())
    delta = torch.rand(x.shape, generator=torch.Generator().manual_seed(2))
    assert torch.allclose(remove_dominant(delta, dominant_spectrum(x, 0.0)), delta, atol=1e-6)


def test_ioi_parameters() -> None:
    ioi = IOI()
    assert (ioi.eps, ioi.alpha, ioi.keep, ioi.mask_floor) == (4 / 255, 4 / 255, 0.07, 0.01)
    assert ioi.objective == "mid"
    edge = IOI(alpha=0.002, keep=0.0, mask_floor=0.0)
    assert (edge.alpha, edge.keep, edge.mask_floor) == (0.002, 0.0, 0.0)
    for kwargs in ({"alpha": 0.0}, {"keep": 1.0}, {"keep": 1.5}, {"mask_floor": 1.0}, {"mask_floor": 1.5}):
        with pytest.raises(ValueError):
            IOI(**kwargs)


def test_ioi_step_with_its_own_floor_midpoint_and_zero_gradients() -> None:
    """x + M·HP(δ) with δ = clip(x + α·sign(∇L_mid)) − x at the model's midpoint (5 on [0, 10]), the
    attack's own mask floor, and pixels the model ignores (zero gradient) not stepped at all."""
    pattern = torch.randint(-1, 2, (1, 3, 16, 16), generator=torch.Generator().manual_seed(3)).float()
    model = PatternModel(bias=0.0, gain=1000.0, pattern=pattern, score_range=(0.0, 10.0))
    x = grid_images(2, seed=9)
    with torch.no_grad():
        model.bias = 5.0 - float(model(x).mean())  # one score under the midpoint 5, one over it
        scores = model(x)
    assert float(scores.min()) < 5.0 < float(scores.max()) < 50.0
    attack = IOI(eps=4 / 255, keep=0.07, mask_floor=0.5)
    y = scores.detach()
    grad = input_gradient(model, x, make_objective("mid", 5.0), y)
    step = (x + 4 / 255 * grad.sign()).clamp(0.0, 1.0) - x
    expected = x + variation_mask(x, 0.5) * remove_dominant(step, dominant_spectrum(x, 0.07))
    assert torch.allclose(attack.perturb(model, x), expected, atol=1e-6)
    assert torch.equal(step[:, pattern[0] == 0], torch.zeros_like(step[:, pattern[0] == 0]))
    no_filter = create_attack("ioi", keep=0.0, mask_floor=0.0)
    assert no_filter(model, x).shape == x.shape
