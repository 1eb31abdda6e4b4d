"""Bounded soak of a real gateway: N requests at concurrency C, zero 5xx, and the server's RSS growth.

    python bench/soak.py                                   # 3,000 requests at c=32 on the tiny test model
    python bench/soak.py --model-repository model_repository --requests 1000   # the shipped model
    python bench/soak.py --json

The gateway is a real ``uvicorn serving.app:app`` subprocess (tests/conftest.py ``run_gateway``),
configured so that a soak measures leaks rather than shedding: ``IQA_MAX_QUEUE`` = the concurrency,
so every client may wait for a slot. After ``--warmup`` requests the server's RSS (``/proc/<pid>``)
is the baseline; it is sampled again after each chunk of requests. Exit 1 on any 5xx, any transport
error, or RSS growth of ``--max-growth-mb`` or more. tests/test_hardening_load.py runs a shorter soak.
"""

from __future__ import annotations

import sys
from pathlib import Path

if not __package__:  # run as `python bench/soak.py`: the repository root, not bench/ (whose triton.py
    sys.path[0] = str(Path(__file__).resolve().parents[1])  # would shadow the package torch probes for)

import argparse
import io
import json
import tempfile
import time

import numpy as np
from PIL import Image

from clients.http_load import LoadResult, percentile, run_closed_loop

__all__ = ["main", "photo", "rss_mb", "soak"]


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def photo(width: int = 640, height: int = 480) -> bytes:
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:height, 0:width]
    base = np.stack([xx * 255 // width, yy * 255 // height, (xx + yy) * 255 // (width + height)], -1)
    pixels = np.clip(base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=88)
    return buffer.getvalue()


def _tiny_repository(root: Path) -> Path:
    from tests.conftest import TINY_MODEL_NAME, TINY_PREPROCESS, export_tiny_iqa_onnx, write_model_version

    onnx_file = root / "tiny.onnx"
    export_tiny_iqa_onnx(onnx_file)
    write_model_version(root, TINY_MODEL_NAME, 1, onnx_file, TINY_PREPROCESS)
    return root


def soak(
    repository: Path, *, requests: int, concurrency: int, warmup: int, chunks: int, slots: int
) -> dict[str, object]:
    from tests.conftest import run_gateway

    env = {
        "IQA_ORT_INTRA_OP_THREADS": "1",
        "IQA_MAX_CONCURRENCY": str(slots),
        "IQA_MAX_QUEUE": str(concurrency),
        "IQA_QUEUE_TIMEOUT_S": "30",
        "IQA_LOG_LEVEL": "warning",
    }
    data = photo()
    total = LoadResult()
    with run_gateway(repository, env=env) as server:
        warm = run_closed_loop(server.url, data, concurrency=concurrency, requests=warmup)
        pid = server.process.pid
        samples = [rss_mb(pid)]
        started = time.monotonic()
        for i in range(chunks):
            n = requests // chunks + (1 if i < requests % chunks else 0)
            part = run_closed_loop(server.url, data, concurrency=concurrency, requests=n)
            total.answers += part.answers
            total.errors += part.errors
            samples.append(rss_mb(pid))
        total.wall_s = time.monotonic() - started
    latencies = total.latencies(200)
    return {
        "requests": len(total.answers) + len(total.errors),
        "concurrency": concurrency,
        "slots": slots,
        "statuses": total.statuses(),
        "server_errors_5xx": total.server_errors() + warm.server_errors(),
        "transport_errors": len(total.errors) + len(warm.errors),
        "rate_per_s": round(len(total.answers) / total.wall_s, 1),
        "p50_ms": round(percentile(latencies, 50) * 1e3, 1),
        "p99_ms": round(percentile(latencies, 99) * 1e3, 1),
        "rss_mb_after_warmup_then_each_chunk": [round(s, 1) for s in samples],
        "rss_growth_mb": round(samples[-1] - samples[0], 1),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-repository", type=Path, default=None, help="default: the tiny test model")
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--warmup", type=int, default=300)
    parser.add_argument("--chunks", type=int, default=6, help="RSS samples after each chunk")
    parser.add_argument("--slots", type=int, default=4, help="IQA_MAX_CONCURRENCY")
    parser.add_argument("--max-growth-mb", type=float, default=50.0)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="iqa-soak-") as tmp:
        repository = args.model_repository or _tiny_repository(Path(tmp))
        report = soak(
            repository,
            requests=args.requests,
            concurrency=args.concurrency,
            warmup=args.warmup,
            chunks=args.chunks,
            slots=args.slots,
        )
    if args.json:
        print(json.dumps(report))
    else:
        for key, value in report.items():
            print(f"{key:38s} {value}")
    failed = report["server_errors_5xx"] or report["transport_errors"]
    return 1 if failed or float(report["rss_growth_mb"]) >= args.max_growth_mb else 0  # type: ignore[arg-type]


if __name__ == "__main__":
    sys.exit(main())
