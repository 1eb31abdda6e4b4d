"""Asyncio client of the IQA models on Triton (``tritonclient.grpc.aio``); the sync twin is
``clients/triton_client.py``, which also has the CLI.

    async with AsyncTritonIQAClient("127.0.0.1:8001") as client:
        scores = await client.score_bytes([jpeg_bytes, png_bytes])          # iqa_image ensemble
        results = await client.score_items([("a.jpg", data), ...], concurrency=8)

Requests carry at most ``batch_size`` images (default: the ensemble's ``max_images_per_request``),
each with its own deadline (``timeout_s``), retried with backoff on UNAVAILABLE (``RetryPolicy``).
``score_items`` never raises for one bad image: a batch the server rejects as INVALID_ARGUMENT is
re-sent image by image, so only the bad files carry an error.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

import numpy as np
import tritonclient.grpc.aio as aioclient
from tritonclient.utils import InferenceServerException

from clients.triton_common import (
    BYTES_INPUT,
    CHANNEL_ARGS,
    CROPS_INPUT,
    DEFAULT_URL,
    OUTPUT,
    RETRYABLE,
    BadImage,
    DeadlineExceeded,
    ModelSpec,
    ModelUnavailable,
    RetryPolicy,
    ScoreResult,
    bytes_array,
    chunks,
    classify,
    model_spec,
    status_of,
)

__all__ = ["AsyncTritonIQAClient"]

T = TypeVar("T")
_ONE_OF = re.compile(r"^image \d+ of \d+: ")  # the server's position prefix, moot for a one-image request


class AsyncTritonIQAClient:
    """Scores encoded images through ``iqa_image`` (or crops through ``iqa``), with asyncio."""

    def __init__(
        self,
        url: str = DEFAULT_URL,
        *,
        model: str = "iqa_image",
        timeout_s: float = 10.0,
        retry: RetryPolicy | None = None,
        batch_size: int | None = None,
    ) -> None:
        self.url, self.model, self.timeout_s = url, model, timeout_s
        self.retry = retry or RetryPolicy()
        self._batch_size = batch_size
        self._client = aioclient.InferenceServerClient(url, channel_args=CHANNEL_ARGS)
        self._spec: ModelSpec | None = None

    async def __aenter__(self) -> AsyncTritonIQAClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        await self._client.close()

    async def _call(self, fn: Callable[[], Awaitable[T]], model: str | None = None) -> T:
        delays = self.retry.delays()
        while True:
            try:
                return await fn()
            except InferenceServerException as exc:
                if status_of(exc) in RETRYABLE:
                    delay = next(delays, None)
                    if delay is not None:
                        await asyncio.sleep(delay)
                        continue
                raise classify(exc, url=self.url, model=model or self.model) from None

    async def spec(self) -> ModelSpec:
        """Check the model is ready, read its config (cached); ServerUnreachable / ModelUnavailable."""
        if self._spec is None:
            ready = await self._call(
                lambda: self._client.is_model_ready(self.model, client_timeout=self.timeout_s)
            )
            if not ready:
                raise ModelUnavailable(f"model '{self.model}' is not ready (or unknown) on {self.url}")
            config = await self._call(
                lambda: self._client.get_model_config(self.model, as_json=True, client_timeout=self.timeout_s)
            )
            meta = await self._call(
                lambda: self._client.get_model_metadata(
                    self.model, as_json=True, client_timeout=self.timeout_s
                )
            )
            self._spec = model_spec(self.model, config, meta)
        return self._spec

    async def batch_size(self) -> int:
        return self._batch_size or (await self.spec()).images_per_request

    async def _infer(self, model: str, tensor: Any, version: str = "") -> np.ndarray:
        outputs = [aioclient.InferRequestedOutput(OUTPUT)]
        result = await self._call(
            lambda: self._client.infer(
                model, [tensor], model_version=version, outputs=outputs, client_timeout=self.timeout_s
            ),
            model,
        )
        return np.asarray(result.as_numpy(OUTPUT), dtype=np.float32).reshape(-1)

    async def score_request(self, images: Sequence[bytes]) -> np.ndarray:
        """One request to the ensemble: ``len(images)`` scores, or BadImage if any image is bad."""
        tensor = aioclient.InferInput(BYTES_INPUT, [len(images)], "BYTES")
        tensor.set_data_from_numpy(bytes_array(images))
        return await self._infer(self.model, tensor)

    async def score_bytes(self, images: Sequence[bytes]) -> np.ndarray:
        """Scores of encoded images, in order, batched ``batch_size`` per request (sent concurrently)."""
        size = await self.batch_size()
        parts = await asyncio.gather(*(self.score_request(part) for part in chunks(images, size)))
        return np.concatenate(parts) if parts else np.zeros(0, np.float32)

    async def score_crops(self, crops: np.ndarray, version: str = "", model: str = "iqa") -> np.ndarray:
        """Crop scores from the scorer (``iqa``): uint8 [N, H, W, 3] -> FP32 [N]."""
        tensor = aioclient.InferInput(CROPS_INPUT, list(crops.shape), "UINT8")
        tensor.set_data_from_numpy(np.ascontiguousarray(crops, dtype=np.uint8))
        return await self._infer(model, tensor, version)

    async def score_items(
        self,
        items: Sequence[tuple[str, bytes | Exception]],
        *,
        concurrency: int = 4,
        progress: Callable[[int], None] | None = None,
    ) -> list[ScoreResult]:
        """Score ``(key, bytes)`` pairs (an Exception in place of bytes marks an unreadable file);
        one result per item, in order, errors per item."""
        size = await self.batch_size()
        results: dict[str, ScoreResult] = {}
        readable = [(k, v) for k, v in items if isinstance(v, bytes)]
        for key, value in items:
            if not isinstance(value, bytes):
                results[key] = ScoreResult(key, error=f"cannot read file: {value}")
        if progress and len(results):
            progress(len(results))
        gate = asyncio.Semaphore(concurrency)

        async def run(part: Sequence[tuple[str, bytes]]) -> None:
            async with gate:
                for result in await self._score_part(part):
                    results[result.key] = result
            if progress:
                progress(len(part))

        await asyncio.gather(*(run(part) for part in chunks(readable, size)))
        return [results[key] for key, _ in items]

    async def _score_part(self, part: Sequence[tuple[str, bytes]]) -> list[ScoreResult]:
        """Score one batch; a rejected batch is re-sent image by image. ServerUnreachable and
        ModelUnavailable propagate (nothing else can succeed); a missed deadline is the items' error."""
        try:
            scores = await self.score_request([data for _, data in part])
        except (BadImage, DeadlineExceeded) as exc:
            if len(part) == 1 or isinstance(exc, DeadlineExceeded):
                message = _ONE_OF.sub("", str(exc)) if len(part) == 1 else str(exc)
                return [ScoreResult(key, error=message) for key, _ in part]
            singles = await asyncio.gather(*(self._score_part([item]) for item in part))
            return [result for single in singles for result in single]
        return [ScoreResult(key, score=float(s)) for (key, _), s in zip(part, scores, strict=True)]
