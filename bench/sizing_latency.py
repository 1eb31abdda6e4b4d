"""Cost of sizing an image before its crops: 'fixed' (v1: 288-px short side) vs 'native' (v2).

    python bench/sizing_latency.py [--model-repository model_repository] [--version latest]
        [--sides 384 1024 2048 4096] [--repeats 5] [--threads 2]

One run, one ONNX model, the same encoded JPEG (quality 90) per long side. For each sizing the
served pipeline (serving.pipeline.Scorer) runs ``--repeats`` times and the median seconds per stage
(decode, preprocess = resize + crops, infer) are printed, with native ÷ fixed per image. Both
sizings cut the same number of 224-px crops, so inference costs the same; what differs is the resize
(none for a native image up to 2048 px) and what the crops see.
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import statistics
from collections.abc import Sequence

import numpy as np
from PIL import Image

from serving.backends.onnxruntime_backend import OnnxRuntimeBackend
from serving.model_store import resolve_model_version
from serving.pipeline import Scorer


def _jpeg(long_side: int, seed: int = 0) -> bytes:
    """A photo-like test image: smooth gradients plus texture, 4:3, encoded as JPEG q90."""
    h, w = round(long_side * 3 / 4), long_side
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    base = np.stack([xx / w, yy / h, 0.5 + 0.5 * np.sin(xx / 37 + yy / 53)], -1) * 200
    img = np.clip(base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model-repository", default="model_repository")
    p.add_argument("--name", default="iqa")
    p.add_argument("--version", default="latest")
    p.add_argument("--sides", nargs="+", type=int, default=[384, 1024, 2048, 4096])
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)

    mv = resolve_model_version(args.model_repository, args.name, args.version)
    backend = OnnxRuntimeBackend(mv.model_path, mv.info, intra_op_threads=args.threads)
    backend.load()
    scorers = {
        s: Scorer(backend, dataclasses.replace(mv.preprocess, sizing=s)) for s in ("fixed", "native")
    }
    for scorer in scorers.values():
        scorer.warm_up()
    print(f"model {mv.name} v{mv.version}, {args.threads} threads, median of {args.repeats} runs (ms)")
    print("| long side | sizing | decode | preprocess | infer | total | native ÷ fixed |")
    print("|---|---|---|---|---|---|---|")
    for side in args.sides:
        data = _jpeg(side)
        totals = {}
        for sizing, scorer in scorers.items():
            runs = [scorer.score(data).timings for _ in range(args.repeats)]
            med = {k: statistics.median(r[k] for r in runs) * 1e3 for k in runs[0]}
            totals[sizing] = sum(med.values())
            ratio = f"{totals['native'] / totals['fixed']:.2f}" if sizing == "native" else ""
            print(
                f"| {side} | {sizing} | {med['decode']:.1f} | {med['preprocess']:.1f} | {med['infer']:.1f} "
                f"| {totals[sizing]:.1f} | {ratio} |"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
