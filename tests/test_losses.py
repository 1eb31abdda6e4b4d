"""The ranking loss (training/losses.py) and the grouped batch sampler (training/data/sampler.py)."""

from __future__ import annotations

import pytest
import torch

from training.data.manifests import ManifestRow
from training.data.sampler import GroupedBatchSampler, ranking_groups
from training.losses import IQALoss, RankConfig, ranking_hinge


def _group(scores: list[float]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    s = torch.tensor(scores, requires_grad=True)
    return s, torch.zeros(len(scores), dtype=torch.long), torch.arange(len(scores))


def test_hinge_is_zero_when_order_holds_by_the_margin() -> None:
    s, g, lv = _group([80.0, 70.0, 60.0, 50.0])  # level 0 best, 10 points apart
    assert ranking_hinge(s, g, lv, margin=5.0).item() == 0.0


def test_hinge_is_positive_inside_the_margin_and_when_inverted() -> None:
    s, g, lv = _group([80.0, 78.0])  # right order, only 2 points apart
    assert ranking_hinge(s, g, lv, margin=5.0).item() == pytest.approx(3.0)
    s, g, lv = _group([60.0, 70.0])  # inverted: the damaged image scores higher
    assert ranking_hinge(s, g, lv, margin=5.0).item() == pytest.approx(15.0)


def test_hinge_gradient_pushes_the_better_image_up() -> None:
    s, g, lv = _group([60.0, 70.0])
    ranking_hinge(s, g, lv, margin=5.0).backward()
    assert s.grad is not None
    assert s.grad[0] < 0 < s.grad[1]  # descent raises s_0 (less damage) and lowers s_1


def test_pairs_only_within_a_group_and_ungrouped_images_join_none() -> None:
    s = torch.tensor([50.0, 90.0, 10.0, 95.0])
    group = torch.tensor([0, 1, -1, -1])  # 0 and 1 are different references; 2, 3 are ungrouped
    level = torch.tensor([0, 3, 0, 5])
    assert ranking_hinge(s, group, level, margin=5.0).item() == 0.0


def test_cross_reference_pairs_follow_the_label_gap() -> None:
    s = torch.tensor([40.0, 60.0], requires_grad=True)
    group, level = torch.tensor([0, 1]), torch.tensor([0, 0])
    mos = torch.tensor([80.0, 20.0])  # image 0 is far better by its label but scores lower
    assert ranking_hinge(s, group, level, 5.0, mos, cross_gap=0.0).item() == 0.0
    assert ranking_hinge(s, group, level, 5.0, mos, cross_gap=30.0).item() == pytest.approx(25.0)


def test_iqa_loss_adds_weighted_hinge_to_regression() -> None:
    pred, g, lv = _group([60.0, 70.0])
    y = torch.tensor([60.0, 70.0])  # regression is perfect; only the (inverted) ranking costs
    assert IQALoss("l1", RankConfig(weight=0.0))(pred, y, g, lv).item() == 0.0
    assert IQALoss("l1", RankConfig(weight=2.0, margin=5.0))(pred, y, g, lv).item() == pytest.approx(30.0)
    assert IQALoss("l1", RankConfig(weight=2.0))(pred, y).item() == 0.0  # no groups given


@pytest.mark.parametrize("kwargs", [{"weight": -1.0}, {"margin": -1.0}, {"group_size": 1}])
def test_rank_config_rejects_bad_values(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        RankConfig(**kwargs)


def _rows() -> list[ManifestRow]:
    rows = []
    for ref in ("a~r0", "a~r1", "b~r0"):
        rows.append(ManifestRow(f"{ref}_p.png", 90.0, "train", ref, "pristine", 0))
        for dist in ("jpeg", "blur"):
            for lv in range(1, 6):
                rows.append(ManifestRow(f"{ref}_{dist}{lv}.png", 90.0 - 10 * lv, "train", ref, dist, lv))
    rows.append(ManifestRow("authentic.png", 50.0, "train", "photo", "authentic", 0))
    return rows


def test_groups_are_one_reference_and_one_distortion_with_the_pristine_first() -> None:
    rows = _rows()
    groups = ranking_groups(rows, min_members=4)
    assert len(groups) == 3 * 2
    for members in groups:
        scenes = {rows[i].scene for i in members}
        dists = {rows[i].distortion for i in members} - {"pristine"}
        assert len(scenes) == 1 and len(dists) == 1 and len(members) == 6
        assert rows[members[0]].distortion == "pristine"


def test_sampler_batches_share_crops_within_groups_and_rank_distinct_levels() -> None:
    rows = _rows()
    sampler = GroupedBatchSampler(rows, batch_size=10, group_size=4, seed=0)
    batches = list(sampler)
    assert len(batches) == len(sampler) == len(rows) // 10
    for batch in batches:
        assert len(batch) == 10
        by_group: dict[int, list[tuple[int, int, int]]] = {}
        for item in batch:
            by_group.setdefault(item[2], []).append(item)
        assert sorted(k for k in by_group if k >= 0) == [0, 1]  # 10 // 4 groups, 2 fillers (group -1)
        assert len(by_group[-1]) == 2
        for g in (0, 1):
            items = by_group[g]
            assert len(items) == 4 and len({key for _, key, _ in items}) == 1
            assert len({rows[i].level for i, _, _ in items}) == 4
            assert len({rows[i].scene for i, _, _ in items}) == 1
    sampler.set_epoch(1)
    assert list(sampler) != batches  # a new epoch draws new groups


def test_sampler_without_groups_gives_ungrouped_batches() -> None:
    rows = [ManifestRow(f"{i}.png", float(i), "train", f"s{i}", "authentic", 0) for i in range(20)]
    batches = list(GroupedBatchSampler(rows, batch_size=8, group_size=4))
    assert all(g == -1 for b in batches for _, _, g in b) and all(len(b) == 8 for b in batches)
