"""Gateway settings: every knob is an ``IQA_*`` environment variable with a sane default."""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = ["Settings", "app_settings", "get_settings"]

LogLevel = Literal["critical", "error", "warning", "info", "debug"]


def _cpu_count() -> int:
    """CPUs this process may run on (the affinity mask, which containers narrow)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


class Settings(BaseSettings):
    """Typed gateway configuration, read from ``IQA_``-prefixed environment variables."""

    model_config = SettingsConfigDict(env_prefix="IQA_", extra="ignore", protected_namespaces=())

    # Which model to serve: <model_repository>/<model_name>/<version>/{model.onnx,metadata.json}.
    model_repository: Path = Path("model_repository")
    model_name: str = Field("iqa", min_length=1)
    model_version: str = Field("latest", pattern=r"^(latest|[0-9]+)$")
    backend: str = "onnxruntime"  # or "triton" (serving/backends/__init__.py)

    # Network.
    host: str = "127.0.0.1"
    port: int = Field(8080, ge=0, le=65535)
    log_level: LogLevel = "info"

    # Request limits (the decoded-pixel limit is also capped by the model's own PreprocessConfig).
    max_body_bytes: int = Field(20 * 1024 * 1024, gt=0)
    max_pixels: int = Field(25_000_000, gt=0)

    # Hardening (docs/SERVING.md "Security and limits"; serving/auth.py, limits.py, shutdown.py).
    # API keys: comma-separated keys or "sha256:<hex digest of a key>"; empty = no authentication.
    api_keys: SecretStr = SecretStr("")
    auth_metrics: bool = False  # also require a key on /metrics
    cors_origins: str = ""  # comma-separated allowed origins; empty = no CORS headers at all
    max_concurrency: int = Field(default_factory=lambda: 2 * _cpu_count(), gt=0)  # scoring slots
    max_queue: int = Field(8, ge=0)  # requests that may wait for a slot; more get 429 at once
    queue_timeout_s: float = Field(1.0, ge=0)  # longest wait for a slot before 429
    retry_after_s: int = Field(1, ge=0)  # Retry-After of a 429 overloaded / 503 shutting_down
    request_timeout_s: float = Field(30.0, gt=0)  # deadline of one /score request -> 504
    decode_timeout_s: float = Field(10.0, gt=0)  # a decode slower than this stops the request -> 504
    min_image_side: int = Field(32, ge=1)  # smaller decoded images get 422 image_too_small
    shutdown_drain_s: float = Field(0.0, ge=0)  # after SIGTERM: 503 to new work this long, then close
    graceful_shutdown_s: float = Field(30.0, gt=0)  # python -m serving: in-flight requests' grace

    # ONNX Runtime. 0 threads = ONNX Runtime's default (one per physical core).
    ort_intra_op_threads: int = Field(0, ge=0)
    ort_use_cuda: bool = False

    # Triton (IQA_BACKEND=triton): gRPC address, model name (default: IQA_MODEL_NAME), per-inference
    # deadline, readiness poll period, and how long start-up waits for the model to be ready.
    triton_url: str = "127.0.0.1:8001"
    triton_model_name: str | None = None
    triton_timeout_s: float = Field(10.0, gt=0)
    triton_poll_s: float = Field(0.5, gt=0)
    triton_load_timeout_s: float = Field(120.0, ge=0)

    # Robust scoring modes, POST /score?mode=median|jpeg (serving/robust_modes.py, docs/ROBUST_MODES.md).
    # median: n noisy copies at std sigma ([0, 1] pixel units); bounds for an l2 radius in [0, 1]
    # units of the canonical image, jointly at confidence 1 - alpha; copies scored per backend batch;
    # seed None = fresh OS entropy per request (a fixed seed makes the noise predictable to attackers).
    median_n: int = Field(32, ge=1, le=1024)
    median_sigma: float = Field(0.05, gt=0, le=1)
    median_radius: float = Field(0.025, ge=0)
    median_alpha: float = Field(0.01, gt=0, lt=1)
    median_copies_per_batch: int = Field(8, ge=1)
    median_seed: int | None = None
    jpeg_quality: int = Field(75, ge=1, le=95)  # mode=jpeg: re-encode quality (Pillow)

    # FGSM self-probe, POST /score?probe=true (serving/probe.py, docs/PROBE.md): probe_rate is the share
    # of requests probed without the flag; flagged = |delta| > probe_threshold (None: the calibrated
    # value recorded in <name>_probe/<version>/metadata.json).
    probe_rate: float = Field(0.0, ge=0, le=1)
    probe_threshold: float | None = Field(None, ge=0)
    # flagged also when the probe's linearity statistic exceeds this (None: the calibrated value in the
    # probe's metadata.json; docs/PROBE.md "Linearity")
    probe_linearity_threshold: float | None = Field(None, ge=0)
    # a probed request is scored by the probe graph's clean forward (one graph call, no separate
    # inference); only with the embedded backend (IQA_BACKEND=triton always scores on Triton)
    probe_share_forward: bool = True

    # Prometheus metrics on /metrics (serving/metrics.py, docs/METRICS.md). Drift: PSI and KS of the
    # last drift_window plain scores against metadata.json's reference scores (drift_bins quantile
    # bins), published once drift_min_scores are in and recomputed every drift_recompute_every scores.
    metrics_enabled: bool = True
    drift_window: int = Field(500, ge=10)
    drift_min_scores: int = Field(100, ge=1)
    drift_recompute_every: int = Field(20, ge=1)
    drift_bins: int = Field(10, ge=2, le=100)


@lru_cache
def get_settings() -> Settings:
    """The process-wide settings (cached); tests override this dependency or pass ``Settings`` in."""
    return Settings()


def app_settings(app: Any) -> Settings:
    """The settings a FastAPI app runs with: its ``get_settings`` override, else the environment's."""
    provider = app.dependency_overrides.get(get_settings, get_settings)
    return provider()
