"""The ranking attack's planning (stage one), checked against a reference written from the module's
docstring, plus its candidate plans, parameters and score range, on analytic models (milliseconds).
Its effect on a trained model and on the gate's runner: test_attacks_set_level.py."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import stats
from torch import nn

from tests.attacks.attack_fixtures import PatternModel, grid_images
from tests.iqa_fixtures import TinyIQA
from training.gate.attacks.ranking import (
    RankingAttack,
    _push_plan,
    _reflect_plan,
    first_order_reach,
    plan_targets,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def reference_plan(
    clean: list[float], reach: list[float], lo: float, hi: float, blocks: int = 8, weight: float = 0.1
) -> np.ndarray:
    """Stage one as the ranking module's docstring states it, in NumPy: clip the scores to the range;
    candidates *push* (at or below the lower median +c, else −c) and *reflect in k blocks*
    (k = 1 … blocks, each score to lo_b + hi_b − s, clipped to s ± c); the winner minimizes
    SROCC(t, s) − weight·mean((t − s)²)/mean(c²) (a constant t or s counts as SROCC 1), first on ties."""
    s = np.clip(np.asarray(clean, dtype=np.float64), lo, hi)
    c = np.maximum(np.asarray(reach, dtype=np.float64), 0.0)
    candidates = [np.where(s <= np.sort(s)[(len(s) - 1) // 2], s + c, s - c)]
    if len(s) > 1 and s.max() > s.min():
        for k in range(1, blocks + 1):
            width = (s.max() - s.min()) / k
            block = np.minimum(np.floor((s - s.min()) / width), k - 1)
            mirror = (s.min() + block * width) + (s.min() + (block + 1) * width) - s
            candidates.append(np.clip(mirror, s - c, s + c))
    scale = float(np.mean(c**2)) or 1.0

    def cost(t: np.ndarray) -> float:
        t = np.clip(t, lo, hi)
        constant = t.max() == t.min() or s.max() == s.min()
        rank = 1.0 if constant else float(stats.spearmanr(t, s)[0])
        return rank - weight * float(np.mean((t - s) ** 2)) / scale

    costs = [cost(t) for t in candidates]
    return np.clip(candidates[int(np.argmin(costs))], lo, hi)


@pytest.mark.parametrize(
    ("clean", "reach"),
    [
        ([100.0, 100.0, 80.0], [9.0, 36.0, 22.0]),  # push ties everything at 100: no ranking gained
        ([53.0, 110.0], [8.0, 39.0]),  # the push tie at 61 beats keeping the order
        ([1.0, 3.0], [15.0, 15.0]),  # targets below the range come back to 0
        ([110.0, 81.0, 84.0, 54.0], [10.0, 23.0, 1.0, 6.0]),  # a score above the range counts as 100
        ([2.0, 85.0, 89.0], [8.0, 36.0, 40.0]),
        ([15.0, 90.0, 16.0, 13.0], [29.0, 18.0, 26.0, 32.0]),
        ([90.0, 41.0, -10.0, 25.0, 77.0, 118.0, 37.0], [3.0] * 7),  # 8 blocks win
        ([-6.0, 105.0, 88.0, 116.0, 106.0, -13.0, 2.0, 39.0, 5.0, 99.0, -3.0], [10.0] * 11),  # 7 or 8
        ([88.0, 0.0, 0.0, 23.0, 69.0, 49.0], [36.0] * 6),
    ],
)
def test_plan_targets_is_the_best_documented_plan(clean: list[float], reach: list[float]) -> None:
    t = plan_targets(torch.tensor(clean), torch.tensor(reach), (0.0, 100.0))
    assert t.dtype == torch.float32 and t.shape == (len(clean),)
    assert np.allclose(t.numpy(), reference_plan(clean, reach, 0.0, 100.0), atol=1e-5)


def test_plan_targets_hand_checked_cases() -> None:
    # Push would put every score at 100 (a tie, no ranking gained): reflecting the order wins.
    t = plan_targets(torch.tensor([100.0, 100.0, 80.0]), torch.tensor([9.0, 36.0, 22.0]), (0.0, 100.0))
    assert t.tolist() == [91.0, 80.0, 100.0]
    # 110 is served as 100; pushing 53 up and 100 down by their reaches ties them at 61.
    t = plan_targets(torch.tensor([53.0, 110.0]), torch.tensor([8.0, 39.0]), (0.0, 100.0))
    assert t.tolist() == [61.0, 61.0]
    # Reversing two scores 2 apart with a reach of 15: the lower target is clipped to the range.
    t = plan_targets(torch.tensor([1.0, 3.0]), torch.tensor([15.0, 15.0]), (0.0, 100.0))
    assert t.tolist() == [16.0, 0.0]


def test_the_default_search_uses_eight_blocks_and_the_given_error_weight() -> None:
    s, c = torch.tensor([90.0, 41.0, -10.0, 25.0, 77.0, 118.0, 37.0]), torch.full((7,), 3.0)
    assert torch.equal(plan_targets(s, c, (0.0, 100.0)), plan_targets(s, c, (0.0, 100.0), blocks=8))
    assert not torch.equal(plan_targets(s, c, (0.0, 100.0), blocks=9), plan_targets(s, c, (0.0, 100.0)))
    s, c = torch.tensor([52.0, 68.0, 31.0, 46.0, 45.0]), torch.full((5,), 17.0)
    heavy = plan_targets(s, c, (0.0, 100.0), error_weight=2.0)
    assert np.allclose(heavy.numpy(), reference_plan(s.tolist(), c.tolist(), 0.0, 100.0, weight=2.0))
    assert not torch.equal(heavy, plan_targets(s, c, (0.0, 100.0)))


def test_push_and_reflect_plans() -> None:
    s = torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64)
    assert _push_plan(s, torch.ones(3, dtype=torch.float64)).tolist() == [2.0, 3.0, 2.0]  # median goes up
    s = torch.tensor([10.0, 20.0, 30.0, 40.0], dtype=torch.float64)
    wide = torch.full((4,), 100.0, dtype=torch.float64)
    assert _reflect_plan(s, wide, 1).tolist() == [40.0, 30.0, 20.0, 10.0]  # the whole order reversed
    assert _reflect_plan(s, wide, 2).tolist() == [25.0, 15.0, 35.0, 25.0]  # blocks [10, 25), [25, 40]
    near = torch.full((4,), 2.0, dtype=torch.float64)
    assert _reflect_plan(s, near, 2).tolist() == [12.0, 18.0, 32.0, 38.0]  # clipped to s ± 2
    shifted = torch.tensor([60.0, 70.0, 80.0, 90.0], dtype=torch.float64)
    assert _reflect_plan(shifted, wide, 2).tolist() == [75.0, 65.0, 85.0, 75.0]


def test_ranking_defaults_and_parameter_bounds() -> None:
    attack = RankingAttack()
    assert (attack.eps, attack.steps, attack.reach, attack.blocks, attack.error_weight) == (
        4 / 255, 10, 1.0, 8, 0.1)
    assert attack.alpha == pytest.approx(2.5 * (4 / 255) / 10)
    assert RankingAttack(eps=0.02, steps=4).alpha == pytest.approx(2.5 * 0.02 / 4)
    edge = RankingAttack(steps=1, blocks=1, alpha=0.003, reach=None)
    assert (edge.steps, edge.blocks, edge.alpha, edge.reach) == (1, 1, 0.003, None)
    assert RankingAttack(reach=1e-3).reach == 1e-3
    for kwargs in ({"steps": 0}, {"blocks": 0}, {"reach": 0.0}, {"reach": -1.0}, {"alpha": 0.0}):
        with pytest.raises(ValueError):
            RankingAttack(**kwargs)


def _scores_at(model: nn.Module, values: list[float]) -> torch.Tensor:
    """Constant images scoring ``values`` on a PatternModel with w = 1 (score = bias + gain·level)."""
    levels = (torch.tensor(values) - model.bias) / model.gain
    return levels.view(-1, 1, 1, 1).expand(-1, 3, 8, 8).contiguous()


def test_plan_uses_the_reach_blocks_and_error_weight() -> None:
    model = PatternModel(bias=0.0, gain=100.0, pattern=torch.ones(1, 3, 8, 8))
    x = _scores_at(model, [52.0, 68.0, 31.0, 46.0, 45.0])
    eps = 4 / 255
    reach = first_order_reach(model, x, eps)
    assert torch.allclose(reach, torch.full((5,), eps * 100.0))  # ε·‖∇f‖₁, ‖∇f‖₁ = gain
    attack = RankingAttack(eps=eps, reach=17 / (eps * 100.0), error_weight=2.0)
    (targets,) = attack.plan(model, [x])
    expected = plan_targets(model(x), torch.full((5,), 17.0), (0.0, 100.0), 8, 2.0)
    assert torch.allclose(targets, expected, atol=1e-4)
    light = plan_targets(model(x), torch.full((5,), 17.0), (0.0, 100.0))  # error weight 0.1
    assert not torch.allclose(targets, light, atol=1e-2)


def test_plan_keeps_to_the_models_own_score_range() -> None:
    """Unbounded reach (None) means 'anywhere in the score range' of the model's preprocess_cfg, here
    [10, 20]; a model without one is taken to score on [0, 100]."""
    ranged = PatternModel(bias=0.0, gain=100.0, pattern=torch.ones(1, 3, 8, 8), score_range=(10.0, 20.0))
    x = _scores_at(ranged, [12.0, 12.0, 16.0, 13.0, 12.0])
    (targets,) = RankingAttack(reach=None).plan(ranged, [x])
    expected = plan_targets(ranged(x), torch.full((5,), 10.0), (10.0, 20.0))
    assert torch.allclose(targets, expected, atol=1e-4)
    wider = plan_targets(ranged(x), torch.full((5,), 30.0), (10.0, 20.0))
    assert not torch.allclose(targets, wider, atol=1e-2)
    assert float(targets.min()) >= 10.0 and float(targets.max()) <= 20.0

    class Bare(nn.Module):  # no preprocess_cfg
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return 200.0 * x.flatten(1).mean(1) - 40.0

    bare = Bare()
    x = torch.tensor([0.1, 0.3, 0.5, 0.8]).view(-1, 1, 1, 1).expand(-1, 3, 4, 4).contiguous()  # -20 … 120
    (targets,) = RankingAttack(reach=None).plan(bare, [x])
    assert torch.allclose(targets, plan_targets(bare(x), torch.full((4,), 100.0), (0.0, 100.0)), atol=1e-4)
    assert float(targets.min()) == pytest.approx(0.0) and float(targets.max()) == pytest.approx(100.0)


def test_plan_takes_float64_batches() -> None:
    torch.manual_seed(0)
    model = TinyIQA()  # float32 convolutions: the batches are converted to float32 first
    x = grid_images(3, seed=8)
    (as64,) = RankingAttack().plan(model, [x.double()])
    (as32,) = RankingAttack().plan(model, [x])
    assert torch.equal(as64, as32)
