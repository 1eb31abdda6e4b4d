"""The images the gate measures: a seeded subset of a manifest split, resized canonically, with MOS.

``load_eval_data(dataset, num_images, seed)`` returns an ``EvalData``: float 3×H×W images in [0, 1]
on the CPU (canonical sizes may differ), their MOS and their paths (which identify a report's images
for reuse). ``EvalData.head(k)`` is a prefix of the same seeded order; ``EvalData.batches`` groups the
images by size.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import torch
from tqdm import tqdm

from training.data.dataset import ManifestDataset

__all__ = ["EvalData", "load_eval_data", "select_indices"]


@dataclass
class EvalData:
    """Canonical test images (float 3×H×W in [0, 1], CPU; sizes may differ) with their MOS."""

    images: list[torch.Tensor]
    mos: np.ndarray
    paths: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.images)

    def head(self, k: int | None) -> EvalData:
        """The first ``k`` images (None: all); subsets of the gate are prefixes of one seeded order."""
        k = len(self) if k is None else min(int(k), len(self))
        return EvalData(self.images[:k], self.mos[:k], self.paths[:k])

    def batches(self, batch_size: int) -> Iterator[tuple[list[int], torch.Tensor]]:
        """(positions, N×3×H×W batch) with images grouped by size, ``batch_size`` at most."""
        groups: dict[tuple[int, ...], list[int]] = {}
        for i, img in enumerate(self.images):
            groups.setdefault(tuple(img.shape), []).append(i)
        for positions in groups.values():
            for start in range(0, len(positions), batch_size):
                chunk = positions[start : start + batch_size]
                yield chunk, torch.stack([self.images[i] for i in chunk])


def select_indices(n_total: int, n: int | None, seed: int) -> list[int]:
    """A seeded random order of ``n`` of ``n_total`` items (all when n is None)."""
    order = np.random.default_rng(seed).permutation(n_total)
    return [int(i) for i in order[: (n_total if n is None else min(n, n_total))]]


def load_eval_data(dataset: ManifestDataset, num_images: int | None, seed: int = 0) -> EvalData:
    """Canonical images and MOS of a seeded random subset of a manifest split."""
    indices = select_indices(len(dataset), num_images, seed)
    images = []
    for i in tqdm(indices, desc="load images", leave=False, dynamic_ncols=True, mininterval=2.0):
        arr = np.array(dataset.canonical(i), dtype=np.uint8, copy=True)  # writable, contiguous
        images.append(torch.from_numpy(arr).permute(2, 0, 1).float().div_(255.0))
    mos = np.asarray([dataset.rows[i].mos for i in indices], dtype=np.float64)
    return EvalData(images, mos, [str(dataset.rows[i].path) for i in indices])
