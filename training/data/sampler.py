"""Batches of ranking groups: several damage levels of one reference, cut at the same crop.

``GroupedBatchSampler`` fills each training batch with ``batch_size // group_size`` groups. A group
is one reference (manifest ``scene``) and one distortion: ``group_size`` distinct members drawn from
its pristine image and its levels 1..5. Every member of a group gets the same ``crop_key``, so the
dataset cuts the same window (and flip) from each and the group differs only in damage, which is
what the ranking loss (``training.losses``) compares. Items are ``(row index, crop_key, group id)``;
leftover slots of a batch are filled with ungrouped rows (group −1).

A manifest with no groups (authentic photos: one image per scene) gets random ungrouped batches,
so real-MOS datasets train as before with the ranking term at 0.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator, Sequence

import numpy as np
from torch.utils.data import Sampler

from training.data.manifests import ManifestRow

__all__ = ["GroupedBatchSampler", "ranking_groups"]

PRISTINE = "pristine"
Item = tuple[int, int, int]


def ranking_groups(rows: Sequence[ManifestRow], min_members: int) -> list[list[int]]:
    """Row indices of every (reference, distortion) with at least ``min_members`` images, its
    pristine first when the reference has one."""
    pristine: dict[str, int] = {}
    levels: dict[tuple[str, str], list[int]] = defaultdict(list)
    for i, r in enumerate(rows):
        if r.distortion == PRISTINE:
            pristine[r.scene] = i
        elif r.level > 0:
            levels[(r.scene, r.distortion)].append(i)
    groups = []
    for (scene, _), members in sorted(levels.items()):
        members = sorted(members, key=lambda i: rows[i].level)
        if scene in pristine:
            members = [pristine[scene], *members]
        if len(members) >= min_members:
            groups.append(members)
    return groups


class GroupedBatchSampler(Sampler[list[Item]]):
    def __init__(
        self, rows: Sequence[ManifestRow], batch_size: int, group_size: int, seed: int = 0
    ) -> None:
        if batch_size < 1 or group_size < 2:
            raise ValueError("batch_size must be >= 1 and group_size >= 2")
        self.n_rows = len(rows)
        self.batch_size, self.group_size, self.seed, self.epoch = batch_size, group_size, seed, 0
        self.groups = ranking_groups(rows, group_size)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return max(1, self.n_rows // self.batch_size)

    def __iter__(self) -> Iterator[list[Item]]:
        rng = np.random.default_rng([self.seed, self.epoch, 7])
        per_batch = self.batch_size // self.group_size if self.groups else 0
        for _ in range(len(self)):
            batch: list[Item] = []
            for g in range(per_batch):
                members = self.groups[int(rng.integers(len(self.groups)))]
                picked = np.sort(rng.choice(len(members), size=self.group_size, replace=False))
                key = int(rng.integers(2**31))
                batch.extend((members[int(k)], key, g) for k in picked)
            while len(batch) < self.batch_size:
                batch.append((int(rng.integers(self.n_rows)), int(rng.integers(2**31)), -1))
            yield batch
