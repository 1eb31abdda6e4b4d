"""Every attack: mode and gradient hygiene, result and chunking, bad input; what the model sees
during an attack (every iterate inside the ball, PGD's seeded random start, the target never touched
by a transfer attack) and Square deciding on the served, clamped score."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from tests.attacks.attack_fixtures import ALL_ATTACKS, EPS, Probe, assert_delivered, sign_noise
from tests.iqa_fixtures import synthetic_images
from training.gate.attacks import (
    UAP,
    Attack,
    AttackResult,
    adversarial_quality,
    attack_class,
    create_attack,
    run_attack,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


# --- hygiene common to every attack -----------------------------------------------------------


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
    probe = Probe(copy.deepcopy(model))
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


def test_attack_leaves_a_wrapped_eval_model_in_eval_mode(model: nn.Module, images: torch.Tensor) -> None:
    """A fresh CropScorer around an eval-mode model: the attack must not flip the model to train mode
    (its BatchNorm statistics would then change on the next forward)."""
    from training.gate.scoring import CropScorer
    from training.preprocessing import PreprocessConfig

    with_bn = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.LazyLinear(1))
    with_bn(images[:2, :, :32, :32])  # materialise the lazy layer at the crop size
    with_bn.eval()
    scorer = CropScorer(with_bn, PreprocessConfig(short_side=32, crop_size=32, num_eval_crops=1))
    assert not scorer.training
    wrapper = nn.Sequential(with_bn)  # a wrapper in train mode around the eval model
    create_attack("pgd", steps=2)(scorer, images[:2])
    create_attack("fgsm")(wrapper, images[:2, :, :32, :32])
    assert wrapper.training and not any(m.training for m in with_bn.modules())


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
        seer = Probe(copy.deepcopy(surrogate), keep_inputs=True)
        create_attack(name, surrogate=seer, **params)(model, x)
    else:
        seer = Probe(copy.deepcopy(model), keep_inputs=True)
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
        probe = Probe(copy.deepcopy(model), keep_inputs=True)
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
    target = Probe(copy.deepcopy(model))
    source = Probe(copy.deepcopy(surrogate))
    x_adv = create_attack("korhonen", surrogate=source, steps=4)(target, x)
    assert target.calls == 0
    assert sum(source.grad_enabled) == 4
    assert not torch.equal(x_adv, x)
    white_box = Probe(copy.deepcopy(model))
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
