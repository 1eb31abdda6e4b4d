"""Cost per image of the gateway's robust scoring modes: plain vs median smoothing vs JPEG purification.

    python bench/robust_modes.py [--model-repository model_repository] [--version 2]
        [--images a.jpg b.png ...] [--repeats 5] [--threads 2] [--median-n 8 32] [--json out.json]

One run, one ONNX Runtime backend, the served pipeline (``serving.pipeline.Scorer.score`` with the
mode objects of ``serving.robust_modes``, the settings' defaults for σ, R, α and the JPEG quality).
Every image is scored ``--repeats`` times per mode; the table gives the median milliseconds per image
per stage and the ratio of the total to plain scoring measured in the same run. Without ``--images``
a photo-like 512x384 JPEG (the benchmark paper's KonIQ resolution) is used.
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from serving.backends.onnxruntime_backend import OnnxRuntimeBackend
from serving.model_store import resolve_model_version
from serving.pipeline import Scorer
from serving.robust_modes import JpegPurification, MedianSmoothing, RobustMode
from serving.settings import Settings


def _photo_jpeg(width: int = 512, height: int = 384, seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    base = np.stack([xx / width, yy / height, 0.5 + 0.5 * np.sin(xx / 37 + yy / 53)], -1) * 200
    img = np.clip(base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def _modes(settings: Settings, median_ns: Sequence[int]) -> dict[str, RobustMode | None]:
    modes: dict[str, RobustMode | None] = {"plain": None}
    for n in median_ns:
        modes[f"median n={n}"] = MedianSmoothing(
            n=n, sigma=settings.median_sigma, radius=settings.median_radius, alpha=settings.median_alpha,
            copies_per_batch=settings.median_copies_per_batch,
        )
    modes[f"jpeg q={settings.jpeg_quality}"] = JpegPurification(quality=settings.jpeg_quality)
    return modes


def measure(
    scorer: Scorer, images: Sequence[bytes], modes: dict[str, RobustMode | None], repeats: int
) -> dict[str, dict[str, float]]:
    """Median ms per image per stage (and "total") of every mode, over images x repeats. The modes
    take turns on each image, so a change in the machine's load hits them alike."""
    runs: dict[str, list[dict[str, float]]] = {name: [] for name in modes}
    for _ in range(repeats):
        for data in images:
            for name, mode in modes.items():
                runs[name].append(scorer.score(data, mode).timings)
    out: dict[str, dict[str, float]] = {}
    for name, timings in runs.items():
        stages = {k: statistics.median(r[k] for r in timings) * 1e3 for k in timings[0]}
        stages["total"] = statistics.median(sum(r.values()) for r in timings) * 1e3
        out[name] = stages
    return out


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model-repository", default="model_repository")
    p.add_argument("--name", default="iqa")
    p.add_argument("--version", default="latest")
    p.add_argument("--images", nargs="*", type=Path, default=[])
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--median-n", nargs="+", type=int, default=None, help="default: IQA_MEDIAN_N")
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)

    settings = Settings()
    mv = resolve_model_version(args.model_repository, args.name, args.version)
    backend = OnnxRuntimeBackend(mv.model_path, mv.info, intra_op_threads=args.threads)
    backend.load()
    scorer = Scorer(backend, mv.preprocess)
    scorer.warm_up()
    images = [path.read_bytes() for path in args.images] or [_photo_jpeg()]
    modes = _modes(settings, args.median_n or [settings.median_n])
    result = measure(scorer, images, modes, args.repeats)
    plain = result["plain"]["total"]
    print(f"model {mv.name} v{mv.version}, {args.threads} threads, {len(images)} image(s) x "
          f"{args.repeats} runs, median ms per image; sigma={settings.median_sigma}")
    print("| mode | decode | preprocess | infer | postprocess | total | ÷ plain |")
    print("|---|---|---|---|---|---|---|")
    for name, ms in result.items():
        print(f"| {name} | {ms['decode']:.1f} | {ms['preprocess']:.1f} | {ms['infer']:.1f} "
              f"| {ms['postprocess']:.2f} | {ms['total']:.1f} | {ms['total'] / plain:.2f} |")
    if args.json is not None:
        args.json.write_text(json.dumps({
            "model": mv.name, "version": mv.version, "threads": args.threads, "repeats": args.repeats,
            "n_images": len(images), "ms_per_image": result,
            "ratio_to_plain": {k: v["total"] / plain for k, v in result.items()},
        }, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
