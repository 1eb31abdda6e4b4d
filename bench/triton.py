"""Triton on this CPU vs in-process ONNX Runtime: throughput, p50 and p99 at several concurrencies.

    python bench/triton.py [--seconds 20] [--concurrency 1 8 32] [--model iqa iqa_image]
        [--side 512] [--ort-threads 0] [--json runs/bench_triton.json]

One run. It starts the wheel's ``tritonserver`` (``export.triton_server.TritonServer``, the scorer's
Python-backend ``cpu`` config, free loopback ports; stopped on exit, Ctrl-C or error) on the
committed ``model_repository`` and measures, on the same photo (scikit-image's astronaut as a JPEG,
``--side`` px):

- ``iqa``: the photo's preprocessed uint8 crops. Triton: a gRPC request to ``iqa``; in-process:
  ``OnnxRuntimeBackend.infer`` on the same crops (one shared session, as in the gateway).
- ``iqa_image``: the encoded bytes. Triton: a gRPC request to the ``iqa_image`` ensemble (decode,
  preprocess, score, average); in-process: ``serving.pipeline.Scorer.score`` on the same bytes (the
  gateway's embedded path, without HTTP).

Each cell is ``clients.triton_load.run_closed_loop``: ``concurrency`` threads, each sending its next
request (one image) as soon as the previous one answered, for ``--seconds``. The two targets are
measured alternately per cell so that background load hits both alike. The load generator runs in
this process for both targets (for Triton it also pays the gRPC client's CPU, on the same cores as
the server). The ratio at saturation is Triton's best throughput over the concurrencies ÷ in-process's
best (goal: >= 80%).
"""

from __future__ import annotations

import sys
from pathlib import Path

if not __package__:  # run as `python bench/triton.py`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import argparse
import datetime as dt
import json
import os
import platform
import signal
from collections.abc import Callable, Sequence
from dataclasses import asdict

import numpy as np

from clients.triton_common import bytes_array
from clients.triton_load import LoadResult, run_closed_loop, run_load, sample_photo
from export.triton_server import DEFAULT_VENV, TritonServer

REPO_ROOT = Path(__file__).resolve().parents[1]
MODELS = ("iqa", "iqa_image")
GOAL = 0.8


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model-repository", type=Path, default=REPO_ROOT / "model_repository")
    p.add_argument("--model", nargs="+", choices=MODELS, default=list(MODELS))
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    p.add_argument("--seconds", type=float, default=20.0, help="measured seconds per cell")
    p.add_argument("--side", type=int, default=512, help="side of the JPEG photo")
    p.add_argument("--ort-threads", type=int, default=0, help="in-process intra-op threads (0: ORT default)")
    p.add_argument("--warmup", type=float, default=3.0, help="unmeasured seconds per model and target first")
    p.add_argument("--config-name", default="cpu", help="the scorer's Triton config (--model-config-name)")
    p.add_argument("--url", default=None, help="use a running Triton's gRPC address instead of starting one")
    p.add_argument("--venv", type=Path, default=DEFAULT_VENV, help="venv holding nvidia-pytriton")
    p.add_argument("--json", type=Path, default=None, help="also write the results to this JSON file")
    return p


class InProcess:
    """The gateway's embedded path: one ONNX Runtime session and Scorer, shared by every thread."""

    def __init__(self, repository: Path, intra_op_threads: int) -> None:
        from serving.backends.onnxruntime_backend import OnnxRuntimeBackend
        from serving.model_store import resolve_model_version
        from serving.pipeline import Scorer
        from serving.settings import Settings

        model = resolve_model_version(repository, "iqa", "latest")
        self.backend = OnnxRuntimeBackend(model.model_path, model.info, intra_op_threads=intra_op_threads)
        self.backend.load()
        self.scorer = Scorer(self.backend, model.preprocess, max_pixels=Settings().max_pixels)
        self.scorer.warm_up()
        self.preprocess = model.preprocess
        self.version = model.info.version

    def sender(self, model: str, photo: bytes, crops: np.ndarray) -> Callable[[], object]:
        if model == "iqa_image":
            return lambda: self.scorer.score(photo)
        return lambda: self.backend.infer(crops)


def measure(
    url: str,
    inproc: InProcess,
    models: Sequence[str],
    concurrencies: Sequence[int],
    seconds: float,
    side: int,
    warmup: float = 0.0,
) -> list[dict[str, object]]:
    from training.preprocessing import preprocess_bytes

    photo = sample_photo(side)
    crops = preprocess_bytes(photo, inproc.preprocess)
    rows: list[dict[str, object]] = []
    for model in models:
        payload = bytes_array([photo]) if model == "iqa_image" else crops

        def local_sender(m: str = model) -> Callable[[], object]:
            return inproc.sender(m, photo, crops)

        if warmup > 0:  # not measured: caches, allocators, the batcher's first batches
            run_load(url, model, payload, max(concurrencies), warmup)
            run_closed_loop(local_sender, max(concurrencies), warmup, model)
        for concurrency in concurrencies:
            triton = run_load(url, model, payload, concurrency, seconds)
            local = run_closed_loop(local_sender, concurrency, seconds, model)
            for target, result in (("triton", triton), ("in-process", local)):
                rows.append(_row(target, result))
                rate = f"{result.images_per_s:.1f} images/s"
                print(f"  {model} c={concurrency} {target}: {rate}", file=sys.stderr, flush=True)
    return rows


def _row(target: str, r: LoadResult) -> dict[str, object]:
    return {"target": target, **asdict(r), "images_per_s": r.images_per_s}


def saturation_ratios(rows: Sequence[dict[str, object]]) -> dict[str, dict[str, float]]:
    """Per model: best images/s of each target over the concurrencies, and Triton ÷ in-process."""
    out: dict[str, dict[str, float]] = {}
    for model in dict.fromkeys(str(r["model"]) for r in rows):
        best = {
            target: max(
                float(r["images_per_s"]) for r in rows if r["model"] == model and r["target"] == target
            )
            for target in ("triton", "in-process")
        }
        ratio = best["triton"] / best["in-process"] if best["in-process"] > 0 else float("nan")
        out[model] = {**best, "ratio": ratio}
    return out


def table(rows: Sequence[dict[str, object]]) -> str:
    lines = [
        "| model | concurrency | Triton images/s | p50 ms | p99 ms | in-process images/s | p50 ms | p99 ms "
        "| Triton ÷ in-process |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    cells: dict[tuple[str, int], dict[str, dict[str, object]]] = {}
    for r in rows:
        cells.setdefault((str(r["model"]), int(r["concurrency"])), {})[str(r["target"])] = r  # type: ignore[call-overload]
    for (model, concurrency), pair in cells.items():
        t, i = pair["triton"], pair["in-process"]
        rate_t, rate_i = float(t["images_per_s"]), float(i["images_per_s"])  # type: ignore[arg-type]
        ratio = rate_t / rate_i if rate_i else float("nan")
        errors = int(t["errors"]) + int(i["errors"])  # type: ignore[call-overload]
        lines.append(
            f"| {model} | {concurrency} | {float(t['images_per_s']):.1f} | {float(t['p50_ms']):.0f} "
            f"| {float(t['p99_ms']):.0f} | {float(i['images_per_s']):.1f} | {float(i['p50_ms']):.0f} "
            f"| {float(i['p99_ms']):.0f} | {ratio:.0%} |" + (f" {errors} errors" if errors else "")
        )
    return "\n".join(lines)


def _raise_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    signal.signal(signal.SIGTERM, _raise_interrupt)  # a kill stops the server too (finally below)
    started = dt.datetime.now(dt.UTC)
    inproc = InProcess(args.model_repository, args.ort_threads)
    server: TritonServer | None = None
    try:
        url = args.url
        if url is None:
            server = TritonServer(args.model_repository, config_name=args.config_name or None, venv=args.venv)
            server.start(timeout=240)
            url = server.grpc_url
        print(f"Triton at {url}; {args.seconds:g} s per cell", file=sys.stderr, flush=True)
        rows = measure(url, inproc, args.model, args.concurrency, args.seconds, args.side, args.warmup)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    finally:
        if server is not None:
            server.stop()
    ratios = saturation_ratios(rows)
    load = os.getloadavg()
    print(
        f"model iqa v{inproc.version}, {args.side}-px JPEG, {args.seconds:g} s per cell, Triton config "
        f"'{args.config_name}', {os.cpu_count()} CPUs, load average at the end {load[0]:.1f}"
    )
    print(table(rows))
    for model, r in ratios.items():
        verdict = "meets" if r["ratio"] >= GOAL else "misses"
        print(
            f"{model} at saturation: Triton {r['triton']:.1f} images/s ÷ in-process {r['in-process']:.1f} "
            f"= {r['ratio']:.1%} ({verdict} the {GOAL:.0%} goal)"
        )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        meta = {
            "date": started.isoformat(timespec="seconds"),
            "argv": list(sys.argv[1:] if argv is None else argv),
            "version": inproc.version,
            "cpus": os.cpu_count(),
            "machine": platform.machine(),
            "loadavg_end": load,
        }
        args.json.write_text(json.dumps({"meta": meta, "rows": rows, "saturation": ratios}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
