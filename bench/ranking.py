"""Held-out ranking check: does the served score fall as damage grows, on photos never trained on?

    python bench/ranking.py                          # latest model version vs BRISQUE, all photos
    python bench/ranking.py --versions 1 2 --json runs/ranking.json --markdown docs/RANKING.md
    python bench/ranking.py --packages darknet --sizes 384 --peer none   # quick subset

Every held-out photo (bench/heldout.py: Debian ``darknet`` and ``opencv-doc``, never used to train,
validate or select) is resized to two long sides between 384 and 2048 px, then damaged with each
kind of bench/damage.py at levels 0..5. Each image is encoded as a client would send it and scored
through the served pipeline (``serving.pipeline.Scorer``: the one preprocessing code, the model
repository's ONNX artifact, ONNX Runtime). Agreement for one (photo, size, kind) is Spearman's ρ
between the score and −level (1.0: heavier damage always scores lower; a constant score counts 0).
The table gives the mean per kind and the mean over kinds, with BRISQUE (bench/brisque_peer.py)
scored on the same bytes in the same run. BRISQUE's scores are cached by image hash
(``~/.cache/robust_iqa/brisque.json``): they depend on the bytes only.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from collections import defaultdict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from scipy import stats
from tqdm import tqdm

from bench.damage import KINDS, LEVELS, render
from bench.heldout import HELDOUT_PACKAGES, default_cache_dir, heldout_photos
from training.preprocessing import decode_image

__all__ = ["agreement", "onnx_scorer", "photo_sizes", "ranking_check"]

Scorer = Callable[[bytes], float]
LARGE_SIDES = (768, 1024, 1536, 2048)
MAX_UPSCALE = 1.6


def photo_sizes(index: int, native_long: int, sizes: Sequence[int] | None = None) -> list[int]:
    """Long sides a photo is checked at: 384 and one large side (rotating over LARGE_SIDES, at most
    MAX_UPSCALE × the photo's own), or ``sizes`` when given (those within the upscale bound)."""
    limit = native_long * MAX_UPSCALE
    if sizes:
        return [s for s in sizes if s <= limit] or [min(sizes)]
    allowed = [s for s in LARGE_SIDES if s <= limit]
    large = allowed[min(index % len(LARGE_SIDES), len(allowed) - 1)] if allowed else 384
    return sorted({384, large})


def resize_long(img: np.ndarray, long_side: int) -> np.ndarray:
    h, w = img.shape[:2]
    s = long_side / max(h, w)
    size = (max(1, round(w * s)), max(1, round(h * s)))
    return np.asarray(Image.fromarray(img).resize(size, Image.Resampling.LANCZOS), dtype=np.uint8)


def agreement(scores: Sequence[float], levels: Sequence[int]) -> float:
    """Spearman ρ between scores and −level; 0 when the scores are constant."""
    rho = stats.spearmanr(scores, -np.asarray(levels)).statistic
    return 0.0 if not np.isfinite(rho) else float(rho)


def onnx_scorer(repository: Path, name: str, version: str | int) -> tuple[Scorer, int]:
    """The gateway's scoring of bytes (ONNX Runtime backend) for one model-repository version."""
    from serving.backends.onnxruntime_backend import OnnxRuntimeBackend
    from serving.model_store import resolve_model_version
    from serving.pipeline import Scorer as PipelineScorer

    mv = resolve_model_version(repository, name, version)
    backend = OnnxRuntimeBackend(mv.model_path, mv.info)
    backend.load()
    scorer = PipelineScorer(backend, mv.preprocess)
    return (lambda data: scorer.score(data).score), mv.version


class BrisqueCache:
    """BRISQUE quality of encoded bytes, cached on disk by SHA-256 (it depends on the bytes only)."""

    def __init__(self, path: Path) -> None:
        from bench.brisque_peer import brisque_quality

        self.path, self._fn = path, brisque_quality
        self.values: dict[str, float] = json.loads(path.read_text()) if path.is_file() else {}

    def __call__(self, data: bytes) -> float:
        key = hashlib.sha256(data).hexdigest()
        if key not in self.values:
            self.values[key] = self._fn(decode_image(data))
        return self.values[key]

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text(json.dumps(self.values))


def ranking_check(
    scorers: dict[str, Scorer],
    photos: Sequence[tuple[str, np.ndarray]],
    kinds: Sequence[str] = KINDS,
    sizes: Sequence[int] | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Per scorer: mean agreement per kind, overall (mean over kinds), and every case."""
    cases: dict[str, dict[str, list[float]]] = {n: defaultdict(list) for n in scorers}
    jobs = [
        (name, img, long_side)
        for i, (name, img) in enumerate(photos)
        for long_side in photo_sizes(i, max(img.shape[:2]), sizes)
    ]
    levels = list(range(LEVELS + 1))
    for name, img, long_side in tqdm(jobs, desc="photos x sizes", disable=not progress, file=sys.stderr):
        sized = resize_long(img, long_side)
        seed = int.from_bytes(hashlib.sha256(f"{name}/{long_side}".encode()).digest()[:4], "little")
        for kind in kinds:
            encoded = [render(kind, sized, lv, seed) for lv in levels]
            for scorer_name, fn in scorers.items():
                cases[scorer_name][kind].append(agreement([fn(b) for b in encoded], levels))
    out: dict[str, Any] = {"n_cases_per_kind": len(jobs), "kinds": list(kinds), "scorers": {}}
    for scorer_name, per_kind in cases.items():
        means = {k: float(np.mean(v)) for k, v in per_kind.items()}
        out["scorers"][scorer_name] = {
            "per_kind": means,
            "overall": float(np.mean(list(means.values()))),
            "min_case": {k: float(np.min(v)) for k, v in per_kind.items()},
        }
    return out


def markdown(result: dict[str, Any]) -> str:
    names = list(result["scorers"])
    lines = [
        "| kind | " + " | ".join(names) + " |",
        "|---|" + "---|" * len(names),
    ]
    for kind in [*result["kinds"], "overall"]:
        row = [
            result["scorers"][n]["overall"] if kind == "overall" else result["scorers"][n]["per_kind"][kind]
            for n in names
        ]
        label = f"**{kind}**" if kind == "overall" else kind
        lines.append(f"| {label} | " + " | ".join(f"{v:.3f}" for v in row) + " |")
    return "\n".join(lines) + "\n"


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ranking.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--model-repository", type=Path, default=Path("model_repository"))
    p.add_argument("--name", default="iqa")
    p.add_argument("--versions", nargs="+", default=["latest"], help="model versions to check")
    p.add_argument("--packages", nargs="+", default=list(HELDOUT_PACKAGES), choices=list(HELDOUT_PACKAGES))
    p.add_argument("--kinds", nargs="+", default=list(KINDS), choices=list(KINDS))
    p.add_argument("--sizes", nargs="+", type=int, help="long sides (default: 384 + one large per photo)")
    p.add_argument("--peer", choices=("brisque", "none"), default="brisque")
    p.add_argument("--cache-dir", type=Path, default=default_cache_dir())
    p.add_argument("--json", type=Path, help="write the full result here")
    p.add_argument("--markdown", type=Path, help="write the table here")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    try:
        scorers: dict[str, Scorer] = {}
        for v in args.versions:
            fn, resolved = onnx_scorer(args.model_repository, args.name, v)
            scorers[f"{args.name} v{resolved}"] = fn
        found = heldout_photos(args.cache_dir, tuple(args.packages))
        photos = [(p.name, decode_image(p.path.read_bytes())) for p in found]
        brisque = None
        if args.peer == "brisque":
            brisque = BrisqueCache(args.cache_dir.parent / "brisque.json")
            scorers["BRISQUE"] = brisque
    except (OSError, RuntimeError, ValueError) as exc:
        print(f"ranking.py: error: {exc}", file=sys.stderr)
        return 1
    try:
        result = ranking_check(scorers, photos, args.kinds, args.sizes)
    finally:
        if brisque is not None:
            brisque.save()
    result["photos"] = [n for n, _ in photos]
    table = markdown(result)
    print(f"{len(photos)} held-out photos, {result['n_cases_per_kind']} photo x size cases per kind")
    print(table)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2, sort_keys=True))
    if args.markdown:
        args.markdown.write_text(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
