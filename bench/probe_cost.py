"""Cost of the FGSM self-probe: probe-graph time ÷ plain scoring time per image, measured in one run.

    python bench/probe_cost.py [--model-repository model_repository] [--version 2] [--rounds 15]
        [--threads 2]

The same 5 evaluation crops of 224 px (the scikit-image astronaut, sized as the gateway sizes it)
go through ``iqa/<version>/model.onnx`` (plain scoring) and ``iqa_probe/<version>/model.onnx`` (clean
forward, input-gradient backward, FGSM forward) in ONNX Runtime, one session each with the
gateway's options. Runs alternate (plain, probe, plain, probe, ...) after a warm-up so both see the
same machine load; the ratio is of the medians. Goal: ≤ 4 (issue 13).

``--photo-side S`` (default 1080, 0 to skip) also measures whole requests in-process through the
gateway's ``Scorer`` (serving/app.load_scorer with the default settings: decode, validate, resize,
crops, inference, probe), on the astronaut as a JPEG (quality 90) of S×S px, like an ad creative:
plain, probed with the shared forward (the default: the probe graph's clean pass is the score) and
probed without it (``IQA_PROBE_SHARE_FORWARD=false``: scorer + probe graph).
"""

from __future__ import annotations

import sys
from pathlib import Path

if __name__ == "__main__" and not __package__:  # bench/triton.py would shadow the package torch probes for
    sys.path[0] = str(Path(__file__).resolve().parents[1])

import argparse
import statistics
import time
from collections.abc import Sequence

import numpy as np
import onnxruntime as ort

from serving.model_store import resolve_model_version
from serving.probe import probe_model_path
from training.preprocessing import eval_crops, resize_canonical


def _session(path: Path, threads: int) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _seconds(session: ort.InferenceSession, crops: np.ndarray) -> float:
    start = time.perf_counter()
    session.run(None, {"image": crops})
    return time.perf_counter() - start


def measure(repository: Path, name: str, version: int, rounds: int, threads: int) -> dict[str, float]:
    """Median seconds of plain scoring and of the probe on one image's crops, and their ratio."""
    from skimage import data as samples

    model = resolve_model_version(repository, name, version)
    cfg = model.preprocess
    crops = np.ascontiguousarray(eval_crops(resize_canonical(samples.astronaut(), cfg), cfg))
    plain = _session(model.model_path, threads)
    probe = _session(probe_model_path(repository, name, version), threads)
    for _ in range(2):
        _seconds(plain, crops), _seconds(probe, crops)
    plain_s, probe_s = [], []
    for _ in range(rounds):
        plain_s.append(_seconds(plain, crops))
        probe_s.append(_seconds(probe, crops))
    p, q = statistics.median(plain_s), statistics.median(probe_s)
    return {"crops": float(len(crops)), "plain_s": p, "probe_s": q, "ratio": q / p,
            "ratio_min": min(probe_s) / min(plain_s)}


def measure_requests(
    repository: Path, name: str, version: int, rounds: int, threads: int, side: int
) -> dict[str, float]:
    """Median seconds per request of plain, shared-forward probed and unshared probed scoring."""
    import io

    from PIL import Image
    from skimage import data as samples

    from serving.app import load_scorer
    from serving.settings import Settings

    buffer = io.BytesIO()
    Image.fromarray(samples.astronaut()).resize((side, side), Image.Resampling.BICUBIC).save(
        buffer, format="JPEG", quality=90
    )
    photo = buffer.getvalue()
    settings = Settings(model_repository=repository, model_name=name, model_version=str(version),
                        ort_intra_op_threads=threads)
    shared = load_scorer(settings)
    unshared = load_scorer(settings.model_copy(update={"probe_share_forward": False}))
    runs = {"plain": lambda: shared.score(photo), "probe_shared": lambda: shared.score(photo, probe=True),
            "probe_unshared": lambda: unshared.score(photo, probe=True)}
    seconds: dict[str, list[float]] = {k: [] for k in runs}
    for i in range(rounds + 2):
        for key, call in runs.items():
            start = time.perf_counter()
            call()
            if i >= 2:
                seconds[key].append(time.perf_counter() - start)
    out = {k: statistics.median(v) for k, v in seconds.items()}
    out["bytes"] = float(len(photo))
    return out


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model-repository", type=Path, default=Path("model_repository"))
    p.add_argument("--name", default="iqa")
    p.add_argument("--version", type=int, default=2)
    p.add_argument("--rounds", type=int, default=15)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--photo-side", type=int, default=1080, help="JPEG side for whole requests (0: skip)")
    args = p.parse_args(argv)
    r = measure(args.model_repository, args.name, args.version, args.rounds, args.threads)
    print(f"{args.name}/{args.version}, {int(r['crops'])} crops, ONNX Runtime CPU, {args.threads} threads, "
          f"median of {args.rounds} alternating rounds")
    print(f"plain scoring {1000 * r['plain_s']:.1f} ms, probe graph {1000 * r['probe_s']:.1f} ms")
    print(f"probe / plain = {r['ratio']:.2f} (of the fastest runs: {r['ratio_min']:.2f}; goal <= 4)")
    if args.photo_side > 0:
        q = measure_requests(args.model_repository, args.name, args.version, args.rounds, args.threads,
                             args.photo_side)
        print(f"whole requests, {args.photo_side} px JPEG ({q['bytes'] / 1e3:.0f} kB), Scorer in-process: "
              f"plain {1000 * q['plain']:.1f} ms, probed {1000 * q['probe_shared']:.1f} ms "
              f"({q['probe_shared'] / q['plain']:.2f}x; shared forward), "
              f"{1000 * q['probe_unshared']:.1f} ms ({q['probe_unshared'] / q['plain']:.2f}x; "
              "scorer + probe)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
