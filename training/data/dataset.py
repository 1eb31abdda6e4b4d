"""Torch datasets over a manifest CSV (``path,mos,split,scene,distortion,level``).

Training items are one random crop (+ horizontal flip) of the canonical image; evaluation items are
the deterministic multi-crop stack. Both come from ``training.preprocessing``, the same functions the
gateway runs, so training and serving see identical pixels.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from training.data.manifests import ManifestRow, read_manifest
from training.preprocessing import (
    PreprocessConfig,
    eval_crops,
    load_image_file,
    random_crop,
    resize_canonical,
)

__all__ = ["ManifestDataset", "dataset_preprocess_config", "read_split"]


def read_split(manifest: str | Path, split: str | None = None) -> list[ManifestRow]:
    """Rows of a manifest (paths resolved against the manifest's folder), optionally one split."""
    if not Path(manifest).is_file():
        raise FileNotFoundError(f"manifest not found: {manifest} (build one with training/build_dataset.py)")
    return [r for r in read_manifest(manifest) if split is None or r.split == split]


def dataset_preprocess_config(manifest: str | Path) -> PreprocessConfig | None:
    """The PreprocessConfig recorded in ``dataset.json`` next to a built manifest, if any."""
    meta = Path(manifest).parent / "dataset.json"
    if not meta.is_file():
        return None
    with open(meta) as f:
        data = json.load(f)
    return PreprocessConfig.from_dict(data["preprocess"]) if "preprocess" in data else None


def _to_tensor(img: np.ndarray) -> torch.Tensor:
    """uint8 ...×H×W×3 -> float ...×3×H×W in [0, 1]."""
    t = torch.from_numpy(np.ascontiguousarray(img)).float().div_(255.0)
    return t.movedim(-1, -3)


class ManifestDataset(Dataset):
    """Eval items: (K×3×c×c crop stack, mos). Train items: (3×c×c random crop, mos, group, level).

    A training index is a row index or a ``(row, crop_key, group)`` triple from
    ``training.data.sampler.GroupedBatchSampler``: rows with the same crop key get the same window
    and flip (the members of one ranking group)."""

    def __init__(
        self,
        manifest: str | Path,
        split: str,
        cfg: PreprocessConfig,
        train: bool,
        seed: int = 0,
        cache: bool = True,
    ) -> None:
        self.rows = read_split(manifest, split)
        if not self.rows:
            raise ValueError(f"split {split!r} of {manifest} is empty")
        missing = [r.path for r in self.rows if not Path(r.path).is_file()]
        if missing:
            raise FileNotFoundError(f"{len(missing)} images of {manifest} are missing, first: {missing[0]}")
        self.cfg, self.train, self.seed, self.epoch = cfg, train, seed, 0
        self._cache: dict[int, np.ndarray] | None = {} if cache else None

    def __len__(self) -> int:
        return len(self.rows)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def canonical(self, index: int) -> np.ndarray:
        if self._cache is not None and index in self._cache:
            return self._cache[index]
        img = resize_canonical(load_image_file(self.rows[index].path), self.cfg)
        if self._cache is not None:
            self._cache[index] = img
        return img

    def __getitem__(self, index: int | tuple[int, int, int]) -> tuple[torch.Tensor, ...]:
        group = -1
        if isinstance(index, tuple):
            index, crop_key, group = index
            rng = np.random.default_rng((self.seed, self.epoch, crop_key, 1))
        else:
            rng = np.random.default_rng((self.seed, self.epoch, index))
        img = self.canonical(index)
        row = self.rows[index]
        mos = torch.tensor(row.mos, dtype=torch.float32)
        if self.train:
            crop = _to_tensor(random_crop(img, self.cfg, rng))
            return crop, mos, torch.tensor(group), torch.tensor(row.level)
        return _to_tensor(eval_crops(img, self.cfg)), mos

    @property
    def mos(self) -> np.ndarray:
        return np.array([r.mos for r in self.rows], dtype=np.float64)
