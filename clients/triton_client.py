"""The ad platform's client of the IQA models on Triton (gRPC): a library and a CLI.

Library (sync; ``clients/triton_aio.py`` has the asyncio twin)::

    from clients.triton_client import TritonIQAClient
    with TritonIQAClient("127.0.0.1:8001") as client:       # model="iqa_image": bytes in
        scores = client.score_bytes([open("a.jpg", "rb").read(), png_bytes])
    with TritonIQAClient("127.0.0.1:8001", model="iqa") as client:   # crops in, local preprocessing
        score = client.score_image(jpeg_bytes)

CLI: score a folder, a CSV of paths (column ``path``, relative to the CSV) or files, CSV out::

    python clients/triton_client.py data/photos --out scores.csv [--url 127.0.0.1:8001]
        [--model iqa_image|iqa] [--batch-size 6] [--concurrency 4] [--timeout 10] [--retries 4]

Exit status: 0 when every image was scored, 1 when some could not be (their ``error`` column says
why), 2 for an unreachable server, an unknown model or bad arguments (one ``error:`` line).
"""

from __future__ import annotations

import sys
from pathlib import Path

if not __package__:  # run as `python clients/triton_client.py`: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import argparse
import asyncio
import csv
import time
from collections.abc import Callable, Sequence
from typing import Any, TextIO, TypeVar

import numpy as np
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from clients.triton_common import (
    BYTES_INPUT,
    CHANNEL_ARGS,
    CROPS_INPUT,
    DEFAULT_URL,
    OUTPUT,
    RETRYABLE,
    BadImage,
    ModelSpec,
    ModelUnavailable,
    RetryPolicy,
    ScoreResult,
    TritonClientError,
    bytes_array,
    chunks,
    classify,
    image_score,
    load_preprocess,
    model_spec,
    status_of,
)

__all__ = ["IMAGE_SUFFIXES", "TritonIQAClient", "collect_paths", "main"]

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")
T = TypeVar("T")


class TritonIQAClient:
    """Sync client: bytes to ``iqa_image`` or preprocessed crops to ``iqa``; batching, deadlines, retries."""

    def __init__(
        self,
        url: str = DEFAULT_URL,
        *,
        model: str = "iqa_image",
        timeout_s: float = 10.0,
        retry: RetryPolicy | None = None,
        batch_size: int | None = None,
        model_repository: Path = Path("model_repository"),
        scorer: str = "iqa",
    ) -> None:
        self.url, self.model, self.timeout_s = url, model, timeout_s
        self.retry = retry or RetryPolicy()
        self.model_repository, self.scorer = Path(model_repository), scorer
        self._batch_size = batch_size
        self._client = grpcclient.InferenceServerClient(url, channel_args=CHANNEL_ARGS)
        self._spec: ModelSpec | None = None
        self._preprocess: Any = None

    def __enter__(self) -> TritonIQAClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._client.close()

    def _call(self, fn: Callable[[], T], model: str | None = None) -> T:
        delays = self.retry.delays()
        while True:
            try:
                return fn()
            except InferenceServerException as exc:
                if status_of(exc) in RETRYABLE:
                    delay = next(delays, None)
                    if delay is not None:
                        time.sleep(delay)
                        continue
                raise classify(exc, url=self.url, model=model or self.model) from None

    def spec(self) -> ModelSpec:
        """Check the model is ready, read its config (cached); ServerUnreachable / ModelUnavailable."""
        if self._spec is None:
            t = self.timeout_s
            if not self._call(lambda: self._client.is_model_ready(self.model, client_timeout=t)):
                raise ModelUnavailable(f"model '{self.model}' is not ready (or unknown) on {self.url}")
            config = self._call(
                lambda: self._client.get_model_config(self.model, as_json=True, client_timeout=t)
            )
            meta = self._call(
                lambda: self._client.get_model_metadata(self.model, as_json=True, client_timeout=t)
            )
            self._spec = model_spec(self.model, config, meta)
        return self._spec

    def batch_size(self) -> int:
        return self._batch_size or self.spec().images_per_request

    def _infer(self, model: str, tensor: Any, version: str = "") -> np.ndarray:
        outputs = [grpcclient.InferRequestedOutput(OUTPUT)]
        result = self._call(
            lambda: self._client.infer(
                model, [tensor], model_version=version, outputs=outputs, client_timeout=self.timeout_s
            ),
            model,
        )
        return np.asarray(result.as_numpy(OUTPUT), dtype=np.float32).reshape(-1)

    def score_request(self, images: Sequence[bytes]) -> np.ndarray:
        """One request to the ensemble: ``len(images)`` scores, or BadImage if any image is bad."""
        tensor = grpcclient.InferInput(BYTES_INPUT, [len(images)], "BYTES")
        tensor.set_data_from_numpy(bytes_array(images))
        return self._infer(self.model, tensor)

    def score_bytes(self, images: Sequence[bytes]) -> np.ndarray:
        """Scores of encoded images through the ensemble, ``batch_size`` images per request."""
        parts = [self.score_request(part) for part in chunks(images, self.batch_size())]
        return np.concatenate(parts) if parts else np.zeros(0, np.float32)

    def score_crops(self, crops: np.ndarray, version: str = "", model: str | None = None) -> np.ndarray:
        """Crop scores from the scorer: uint8 [N, H, W, 3] -> FP32 [N]."""
        tensor = grpcclient.InferInput(CROPS_INPUT, list(crops.shape), "UINT8")
        tensor.set_data_from_numpy(np.ascontiguousarray(crops, dtype=np.uint8))
        return self._infer(model or self.scorer, tensor, version)

    def score_image(self, data: bytes) -> float:
        """Tensor mode: preprocess locally (the served version's metadata.json), score the crops on the
        scorer, average and clamp like the gateway. BadImage if the bytes do not decode."""
        from training.preprocessing import ImageDecodeError, ImageTooLargeError, preprocess_bytes

        spec = self.spec()
        if not spec.versions:
            raise ModelUnavailable(f"model '{self.model}' has no ready version on {self.url}")
        version = spec.versions[-1]
        if self._preprocess is None:
            self._preprocess = load_preprocess(self.model_repository, self.scorer, version)
        cfg = self._preprocess
        try:
            crops = preprocess_bytes(data, cfg)
        except (ImageDecodeError, ImageTooLargeError) as exc:
            raise BadImage(str(exc)) from None
        scores = self.score_crops(crops, version=str(version), model=self.scorer)
        return image_score(scores, cfg.score_min, cfg.score_max)


def collect_paths(sources: Sequence[Path]) -> list[Path]:
    """Image files from folders (recursively, by suffix), CSV files (column ``path``, or the first
    column, relative to the CSV's folder) and plain file arguments, in order."""
    paths: list[Path] = []
    for source in sources:
        if source.is_dir():
            paths += sorted(
                p for p in source.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()
            )
        elif source.suffix.lower() == ".csv":
            with source.open(newline="", encoding="utf-8") as f:
                rows = list(csv.reader(f))
            if not rows:
                continue
            column = rows[0].index("path") if "path" in rows[0] else 0
            body = rows[1:] if "path" in rows[0] else rows
            paths += [source.parent / row[column] for row in body if row and row[column].strip()]
        else:
            paths.append(source)
    return paths


def _read(path: Path) -> bytes | Exception:
    try:
        return path.read_bytes()
    except OSError as exc:
        return exc


def _progress(total: int, enabled: bool) -> Any:
    from tqdm import tqdm

    return tqdm(total=total, unit="img", disable=not enabled, file=sys.stderr, dynamic_ncols=True)


def _score_tensors(
    args: argparse.Namespace, items: list[tuple[str, bytes | Exception]], tick: Callable[[int], None]
) -> list[ScoreResult]:
    results = []
    with TritonIQAClient(
        args.url,
        model=args.model,
        timeout_s=args.timeout,
        scorer=args.model,
        retry=RetryPolicy(attempts=args.retries + 1),
        model_repository=args.model_repository,
    ) as client:
        client.spec()
        for key, data in items:
            if isinstance(data, Exception):
                results.append(ScoreResult(key, error=f"cannot read file: {data}"))
            else:
                try:
                    results.append(ScoreResult(key, score=client.score_image(data)))
                except BadImage as exc:
                    results.append(ScoreResult(key, error=str(exc)))
            tick(1)
    return results


async def _score_bytes(
    args: argparse.Namespace, items: list[tuple[str, bytes | Exception]], tick: Callable[[int], None]
) -> list[ScoreResult]:
    from clients.triton_aio import AsyncTritonIQAClient

    async with AsyncTritonIQAClient(
        args.url,
        model=args.model,
        timeout_s=args.timeout,
        retry=RetryPolicy(attempts=args.retries + 1),
        batch_size=args.batch_size,
    ) as client:
        await client.spec()
        return await client.score_items(items, concurrency=args.concurrency, progress=tick)


def write_csv(results: Sequence[ScoreResult], out: TextIO) -> None:
    writer = csv.writer(out)
    writer.writerow(["path", "score", "error"])
    for r in results:
        writer.writerow([r.key, "" if r.score is None else f"{r.score:.6f}", r.error or ""])


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Score images with the IQA models on Triton (gRPC)")
    parser.add_argument("sources", nargs="+", type=Path, help="folders, CSV files of paths, or image files")
    parser.add_argument("--url", default=DEFAULT_URL, help="Triton gRPC address host:port")
    parser.add_argument(
        "--model",
        default="iqa_image",
        help="iqa_image: send the file bytes (ensemble); iqa: preprocess here, send crops",
    )
    parser.add_argument(
        "--model-repository",
        type=Path,
        default=Path("model_repository"),
        help="tensor mode (--model iqa) reads the version's metadata.json here",
    )
    parser.add_argument("--out", type=Path, default=None, help="CSV output (default: stdout)")
    parser.add_argument(
        "--batch-size",
        type=int,
        default=None,
        help="images per request (default: the ensemble's max_images_per_request)",
    )
    parser.add_argument("--concurrency", type=int, default=4, help="requests in flight")
    parser.add_argument("--timeout", type=float, default=10.0, help="deadline of each request, seconds")
    parser.add_argument("--retries", type=int, default=3, help="retries on UNAVAILABLE, with backoff")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    missing = [str(s) for s in args.sources if not s.exists()]
    if missing:
        print(f"error: no such file or folder: {', '.join(missing)}", file=sys.stderr)
        return 2
    paths = collect_paths(args.sources)
    items = [(str(p), _read(p)) for p in paths]
    bar = _progress(len(items), not args.no_progress and bool(items))
    try:
        if args.model.endswith("_image"):
            results = asyncio.run(_score_bytes(args, items, bar.update))
        else:
            results = _score_tensors(args, items, bar.update)
    except TritonClientError as exc:
        bar.close()
        print(f"error: {exc}", file=sys.stderr)
        return 2
    bar.close()
    if args.out:
        with args.out.open("w", newline="", encoding="utf-8") as f:
            write_csv(results, f)
    else:
        write_csv(results, sys.stdout)
    failed = sum(not r.ok for r in results)
    print(
        f"scored {len(results) - failed} of {len(results)} images"
        + (f"; {failed} failed (see the error column)" if failed else ""),
        file=sys.stderr,
    )
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
