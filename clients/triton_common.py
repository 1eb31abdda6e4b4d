"""Shared parts of the Triton clients: typed errors, the retry policy, request building, local scoring.

The sync client (``clients/triton_client.py``) and the asyncio client (``clients/triton_aio.py``)
speak to the same two models:

- ``iqa_image`` (the ensemble): ``image_bytes`` TYPE_STRING [B] -> ``score`` FP32 [B], the bytes a
  client would POST to the gateway's ``/score`` and the gateway's score;
- ``iqa`` (the scorer): ``image`` uint8 [N, H, W, 3] crops -> ``score`` FP32 [N, 1]; the client
  preprocesses with ``training.preprocessing`` and averages the crops itself (``image_score``).
"""

from __future__ import annotations

import json
import math
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tritonclient.utils import InferenceServerException

__all__ = [
    "BYTES_INPUT",
    "CHANNEL_ARGS",
    "CROPS_INPUT",
    "DEFAULT_URL",
    "BadImage",
    "DeadlineExceeded",
    "ModelSpec",
    "ModelUnavailable",
    "RetryPolicy",
    "ScoreResult",
    "ServerUnreachable",
    "TritonClientError",
    "bytes_array",
    "chunks",
    "classify",
    "image_score",
    "load_preprocess",
    "model_spec",
]

DEFAULT_URL = "127.0.0.1:8001"
BYTES_INPUT = "image_bytes"
CROPS_INPUT = "image"
OUTPUT = "score"
RETRYABLE = frozenset({"StatusCode.UNAVAILABLE"})


class TritonClientError(Exception):
    """Base of the client's errors; ``str(exc)`` is one line meant for a person."""


class ServerUnreachable(TritonClientError):
    """Triton did not answer (connection refused, or UNAVAILABLE after every retry)."""


class ModelUnavailable(TritonClientError):
    """The server does not know the model, or it is not ready."""


class BadImage(TritonClientError):
    """The file cannot be read or decoded (the server answered INVALID_ARGUMENT, or it failed locally)."""


class DeadlineExceeded(TritonClientError):
    """The request did not finish within its deadline."""


@dataclass(frozen=True)
class ScoreResult:
    """One image's outcome: a score, or the error that prevented it."""

    key: str
    score: float | None = None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with jitter, for UNAVAILABLE answers only (the server is restarting or
    overloaded); ``attempts`` counts the first try."""

    attempts: int = 4
    initial_backoff_s: float = 0.1
    max_backoff_s: float = 2.0
    multiplier: float = 2.0
    jitter: float = 0.2

    def delays(self) -> Iterator[float]:
        """The sleeps between attempts (``attempts - 1`` of them)."""
        delay = self.initial_backoff_s
        for _ in range(max(self.attempts - 1, 0)):
            yield min(delay, self.max_backoff_s) * (1 + self.jitter * (2 * random.random() - 1))
            delay *= self.multiplier


def status_of(exc: InferenceServerException) -> str:
    return str(exc.status() or "")


def classify(exc: InferenceServerException, *, url: str, model: str) -> TritonClientError:
    """Turn a tritonclient exception into one of the typed errors, with a readable message."""
    status, message = status_of(exc), (exc.message() or str(exc)).strip()
    if status == "StatusCode.UNAVAILABLE":
        return ServerUnreachable(
            f"cannot reach Triton at {url}: {message.splitlines()[0] if message else status}"
        )
    if status == "StatusCode.DEADLINE_EXCEEDED":
        return DeadlineExceeded(f"request to '{model}' at {url} exceeded its deadline")
    if status == "StatusCode.NOT_FOUND" or "unknown model" in message.lower():
        return ModelUnavailable(f"model '{model}' is not available on {url}: {message}")
    if status == "StatusCode.INVALID_ARGUMENT":
        return BadImage(message.removeprefix(f"in ensemble '{model}', "))
    return TritonClientError(f"Triton error from '{model}' at {url}: {status} {message}".strip())


def bytes_array(images: Sequence[bytes]) -> np.ndarray:
    """A 1-D object array of encoded images (the TYPE_STRING tensor ``image_bytes``)."""
    array = np.empty(len(images), dtype=np.object_)
    for i, data in enumerate(images):
        array[i] = bytes(data)
    return array


def chunks(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    """Consecutive slices of at most ``size`` items (client-side batching)."""
    if size < 1:
        raise ValueError("batch size must be >= 1")
    for start in range(0, len(items), size):
        yield items[start : start + size]


def image_score(crop_scores: np.ndarray, low: float, high: float) -> float:
    """The gateway's image score: the mean of the crop scores, clamped to ``[low, high]``."""
    score = float(np.mean(np.asarray(crop_scores, dtype=np.float64)))
    if not math.isfinite(score):
        raise TritonClientError("the model returned a non-finite score")
    return min(max(score, low), high)


def load_preprocess(model_repository: Path, name: str, version: int) -> Any:
    """The ``PreprocessConfig`` of ``<repository>/<name>/<version>/metadata.json`` (tensor mode)."""
    from training.preprocessing import PreprocessConfig

    path = Path(model_repository) / name / str(version) / "metadata.json"
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ModelUnavailable(
            f"{path} not found: tensor mode needs the model repository's metadata"
        ) from None
    return PreprocessConfig.from_dict(meta["preprocess"])


# Passing channel_args replaces tritonclient's defaults, so its message-size limits are repeated here;
# a short reconnect backoff lets a client recover within a second of Triton's restart.
CHANNEL_ARGS = [
    ("grpc.max_send_message_length", 2**31 - 1),
    ("grpc.max_receive_message_length", 2**31 - 1),
    ("grpc.initial_reconnect_backoff_ms", 200),
    ("grpc.min_reconnect_backoff_ms", 200),
    ("grpc.max_reconnect_backoff_ms", 1000),
]


@dataclass(frozen=True)
class ModelSpec:
    """What the client learned about the model from the server (config and metadata)."""

    name: str
    takes_bytes: bool  # True for the ensemble (image_bytes), False for the scorer (image crops)
    images_per_request: int  # ensemble: max_images_per_request; scorer: images of crops per request
    versions: tuple[int, ...]  # ready versions (the scorer's; for the ensemble its pinned scorer version)
    max_batch_size: int = 0


def model_spec(name: str, config: dict[str, Any], metadata: dict[str, Any]) -> ModelSpec:
    """Build a ``ModelSpec`` from ``get_model_config``/``get_model_metadata`` (as_json) answers."""
    config = config.get("config", config)
    inputs = {t["name"] for t in config.get("input", [])}
    params = {k: v.get("string_value", "") for k, v in config.get("parameters", {}).items()}
    versions = tuple(sorted(int(v) for v in metadata.get("versions", []) if str(v).isdigit()))
    max_batch = int(config.get("max_batch_size", 0) or 0)
    if BYTES_INPUT in inputs:
        per_request = int(params.get("max_images_per_request") or 1)
        pinned = params.get("scorer_version", "")
        return ModelSpec(
            name, True, max(per_request, 1), (int(pinned),) if pinned.isdigit() else versions, max_batch
        )
    if CROPS_INPUT in inputs:
        return ModelSpec(name, False, 1, versions, max_batch)
    raise ModelUnavailable(
        f"model '{name}' takes neither '{BYTES_INPUT}' nor '{CROPS_INPUT}' (inputs {sorted(inputs)})"
    )
