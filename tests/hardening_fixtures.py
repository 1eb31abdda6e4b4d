"""Helpers of the hardening tests (tests/test_hardening_*.py): a model with a chosen cost, images,
and a closed-loop HTTP load runner with latency percentiles.

The tiny model of tests/conftest.py scores in a few milliseconds, too fast to keep requests in flight
while a test sends SIGTERM or overloads the gateway. ``export_costly_iqa_onnx`` exports the same
kind of network (uint8 NHWC in, score on [0, 100] out) with a stack of 3x3 convolutions, so one
request costs a known amount of real ONNX Runtime work (``layers`` x ``channels`` sets it).
"""

from __future__ import annotations

import io
import statistics
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image

from tests.conftest import TINY_MODEL_NAME, write_model_version
from training.preprocessing import PreprocessConfig

__all__ = [
    "COSTLY_PREPROCESS",
    "LoadResult",
    "costly_model_repository",
    "export_costly_iqa_onnx",
    "jpeg_bytes",
    "percentile",
    "run_closed_loop",
]


def export_costly_iqa_onnx(path: Path, layers: int, channels: int, seed: int = 0) -> None:
    """``image`` uint8 [N,H,W,3] -> ``score`` float32 [N]; ``layers`` full-resolution 3x3 convolutions."""
    torch = pytest.importorskip("torch")

    class CostlyIQA(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.stem = torch.nn.Conv2d(3, channels, kernel_size=3, padding=1)
            self.body = torch.nn.ModuleList(
                torch.nn.Conv2d(channels, channels, kernel_size=3, padding=1) for _ in range(layers)
            )
            self.head = torch.nn.Linear(channels, 1)

        def forward(self, image: Any) -> Any:
            x = torch.tanh(self.stem(image.permute(0, 3, 1, 2).float() / 255.0))
            for conv in self.body:
                x = torch.tanh(conv(x))
            return torch.sigmoid(4.0 * self.head(x.mean(dim=(2, 3)))[:, 0]) * 100.0

    torch.manual_seed(seed)
    model = CostlyIQA().eval()
    dim = torch.export.Dim
    torch.onnx.export(
        model,
        (torch.zeros((2, 64, 64, 3), dtype=torch.uint8),),
        str(path),
        input_names=["image"],
        output_names=["score"],
        dynamo=True,
        external_data=False,
        dynamic_shapes={"image": {0: dim("N"), 1: dim("H"), 2: dim("W")}},
        verbose=False,
    )


# five 224-px crops: the shipped model's serving shape, so the cost per request is realistic
COSTLY_PREPROCESS = PreprocessConfig(short_side=224, max_long_side=256, crop_size=224, num_eval_crops=5)


def costly_model_repository(root: Path, versions: dict[int, tuple[int, int]]) -> Path:
    """A repository with ``{version: (layers, channels)}`` costly models (5 crops of 224 px)."""
    for version, (layers, channels) in versions.items():
        onnx_file = root / f"costly-{version}.onnx"
        export_costly_iqa_onnx(onnx_file, layers, channels)
        write_model_version(root, TINY_MODEL_NAME, version, onnx_file, COSTLY_PREPROCESS)
    return root


def jpeg_bytes(width: int = 160, height: int = 120, seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=85)
    return buffer.getvalue()


def percentile(values: list[float], q: float) -> float:
    """The ``q``-th percentile (0..100), linear interpolation; NaN for no values."""
    return float(np.percentile(values, q)) if values else float("nan")


@dataclass
class LoadResult:
    """Per-request (status, seconds, headers that matter) of a load run, plus its wall time."""

    outcomes: list[tuple[int, float, dict[str, str]]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)  # transport failures: dropped, refused, timed out
    wall_s: float = 0.0

    def statuses(self) -> dict[int, int]:
        counts: dict[int, int] = {}
        for status, _, _ in self.outcomes:
            counts[status] = counts.get(status, 0) + 1
        return counts

    def latencies(self, status: int) -> list[float]:
        return [s for code, s, _ in self.outcomes if code == status]

    def summary(self, status: int = 200) -> str:
        lat = self.latencies(status)
        med = statistics.median(lat) if lat else float("nan")
        return (
            f"statuses={self.statuses()} errors={len(self.errors)} wall={self.wall_s:.2f}s "
            f"{status}: n={len(lat)} p50={med * 1e3:.1f}ms p99={percentile(lat, 99) * 1e3:.1f}ms"
        )


def post_image(client: httpx.Client, url: str, data: bytes) -> tuple[int, float, dict[str, str]]:
    started = time.monotonic()
    response = client.post(f"{url}/score", content=data, headers={"content-type": "image/jpeg"})
    seconds = time.monotonic() - started
    kept = {k: response.headers[k] for k in ("retry-after", "content-type") if k in response.headers}
    if response.status_code >= 400:
        kept["code"] = response.json()["error"]["code"]  # every error is JSON (fails loudly if not)
    return response.status_code, seconds, kept


def run_closed_loop(
    url: str,
    data: bytes,
    *,
    concurrency: int,
    requests: int,
    timeout_s: float = 30.0,
    on_request: Callable[[int], None] | None = None,
) -> LoadResult:
    """``requests`` POSTs from ``concurrency`` threads, each with its own keep-alive connection."""
    result = LoadResult()
    lock = threading.Lock()
    counter = iter(range(requests))

    def worker() -> None:
        with httpx.Client(timeout=timeout_s) as client:
            while True:
                with lock:
                    index = next(counter, None)
                if index is None:
                    return
                if on_request is not None:
                    on_request(index)
                try:
                    outcome = post_image(client, url, data)
                except httpx.HTTPError as exc:
                    with lock:
                        result.errors.append(f"{type(exc).__name__}: {exc}")
                    continue
                with lock:
                    result.outcomes.append(outcome)

    started = time.monotonic()
    with ThreadPoolExecutor(concurrency) as pool:
        for future in [pool.submit(worker) for _ in range(concurrency)]:
            future.result()
    result.wall_s = time.monotonic() - started
    return result
