"""The images the gate measures: a seeded subset of a manifest split, resized canonically, with MOS;
and the images an attack may fit itself on, from *another* split of the same manifest.

``load_split(manifest, split, preprocess, num_images, seed)`` (or ``load_eval_data(dataset, ...)`` on
a built ``ManifestDataset``) returns an ``EvalData``: float 3×H×W images in [0, 1] on the CPU
(canonical sizes may differ), their MOS and their paths (which identify a report's images for reuse).
``EvalData.head(k)`` is a prefix of the same seeded order; ``EvalData.batches`` groups the images by
size. When the manifest is known, ``EvalData.source`` can load another split of it the same way.

``fit_data(data, split, num_images, seed)`` is what a fitted attack (the UAP) is fitted on: a seeded
subset of ``split`` (train or val) loaded with the same loader, and never one of the evaluated images
(checked by path): fitting a transfer attack on the images it is then evaluated on measures an
in-sample attack, not a transferred one.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from training.data.dataset import ManifestDataset
from training.preprocessing import PreprocessConfig

__all__ = ["EvalData", "FitSet", "SplitSource", "fit_data", "load_eval_data", "load_split", "select_indices"]


@dataclass(frozen=True)
class SplitSource:
    """The manifest and preprocessing the evaluated images were loaded with: other splits of the same
    manifest load the same way (``paths`` without decoding any image, ``load`` with)."""

    manifest: Path
    preprocess: PreprocessConfig

    def dataset(self, split: str) -> ManifestDataset:
        return ManifestDataset(self.manifest, split, self.preprocess, train=False, cache=False)

    def paths(self, split: str, num_images: int | None, seed: int) -> list[str]:
        rows = self.dataset(split).rows
        return [str(rows[i].path) for i in select_indices(len(rows), num_images, seed)]

    def load(self, split: str, num_images: int | None, seed: int) -> EvalData:
        return load_eval_data(self.dataset(split), num_images, seed, manifest=self.manifest)


@dataclass
class EvalData:
    """Canonical test images (float 3×H×W in [0, 1], CPU; sizes may differ) with their MOS; ``source``
    (None for hand-made data) loads other splits of their manifest."""

    images: list[torch.Tensor]
    mos: np.ndarray
    paths: list[str] = field(default_factory=list)
    source: SplitSource | None = None

    def __len__(self) -> int:
        return len(self.images)

    def head(self, k: int | None) -> EvalData:
        """The first ``k`` images (None: all); subsets of the gate are prefixes of one seeded order."""
        k = len(self) if k is None else min(int(k), len(self))
        return EvalData(self.images[:k], self.mos[:k], self.paths[:k], self.source)

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


def load_eval_data(
    dataset: ManifestDataset, num_images: int | None, seed: int = 0, *, manifest: str | Path | None = None
) -> EvalData:
    """Canonical images and MOS of a seeded random subset of a manifest split; with ``manifest`` (the
    file ``dataset`` was read from) the result can load the manifest's other splits (``source``)."""
    indices = select_indices(len(dataset), num_images, seed)
    images = []
    for i in tqdm(indices, desc="load images", leave=False, dynamic_ncols=True, mininterval=2.0):
        arr = np.array(dataset.canonical(i), dtype=np.uint8, copy=True)  # writable, contiguous
        images.append(torch.from_numpy(arr).permute(2, 0, 1).float().div_(255.0))
    mos = np.asarray([dataset.rows[i].mos for i in indices], dtype=np.float64)
    source = SplitSource(Path(manifest), dataset.cfg) if manifest is not None else None
    return EvalData(images, mos, [str(dataset.rows[i].path) for i in indices], source)


def load_split(
    manifest: str | Path, split: str, preprocess: PreprocessConfig, num_images: int | None, seed: int = 0
) -> EvalData:
    """``load_eval_data`` of ``split`` of ``manifest`` (the gate's evaluated images)."""
    return SplitSource(Path(manifest), preprocess).load(split, num_images, seed)


@dataclass(frozen=True)
class FitSet:
    """The images an attack may fit itself on: ``paths`` of a seeded subset of ``split``, known without
    decoding them (they key the attack's cache); ``load()`` decodes them with the evaluated images'
    loader."""

    split: str
    paths: list[str]
    num_images: int | None
    seed: int
    source: SplitSource

    def load(self) -> EvalData:
        data = self.source.load(self.split, self.num_images, self.seed)
        assert data.paths == self.paths, "the fitting images changed between selection and loading"
        return data


def fit_data(data: EvalData, split: str, num_images: int | None, seed: int) -> FitSet:
    """The images an attack may fit itself on (see the module docstring); ValueError when ``data`` has
    no manifest to take them from or when they overlap the evaluated images."""
    if data.source is None:
        raise ValueError(
            "no images to fit the attack on: the evaluated images carry no manifest (load them with "
            "training.gate.data.load_split, or load_eval_data(..., manifest=...))"
        )
    paths = data.source.paths(split, num_images, seed)
    shared = sorted(set(paths) & set(data.paths))
    if shared:
        raise ValueError(
            f"{len(shared)} of the {len(paths)} {split!r} images an attack would be fitted on are "
            f"evaluated images too (first: {shared[0]}); fit on another split"
        )
    return FitSet(split, paths, num_images, seed, data.source)
