"""Every Prometheus metric of the gateway, defined once, and the functions that record them.

Names follow Prometheus's conventions: the ``iqa_`` prefix, base units as suffix (seconds), ``_total``
on counters, ``_info`` for the model's identity, histograms (never summaries), few labels with bounded
values (the route *template*, the status code, the pipeline stage, the scoring mode, the model name).

=========================================  =========  =====================================================
metric                                     type       labels / meaning
=========================================  =========  =====================================================
iqa_http_requests_total                    counter    route (template, or "unmatched"), code (status code)
iqa_http_request_duration_seconds          histogram  route; whole request, first byte in to last byte out
iqa_http_requests_in_flight                gauge      requests being served now (not /metrics itself)
iqa_stage_duration_seconds                 histogram  stage (decode, validate, preprocess, infer, ...,
                                                      probe) from ``ScoreResult.timings``
iqa_score                                  histogram  mode (plain, median, jpeg); buckets 5, 10, ..., 100
iqa_score_drift_psi                        gauge      model; PSI of the last IQA_DRIFT_WINDOW plain scores
                                                      against metadata.json's reference_distribution
iqa_score_drift_ks                         gauge      model; two-sample KS statistic of the same window
iqa_score_drift_window_scores              gauge      model; scores in the window the two gauges describe
iqa_probes_total                           counter    requests whose score was probed (FGSM self-probe)
iqa_probe_flagged_total                    counter    probed requests flagged (delta or linearity)
iqa_probe_abs_delta                        histogram  |adv_score - score| of probed requests (score points)
iqa_probe_linearity                        histogram  the probe's linearity statistic (ratio; docs/PROBE.md)
iqa_model_info                             gauge      model, version, architecture, gate (passed, failed,
                                                      ungated); value 1
=========================================  =========  =====================================================

The drift gauges appear once the window holds IQA_DRIFT_MIN_SCORES scores and are recomputed every
IQA_DRIFT_RECOMPUTE_EVERY plain scores (O(window log window), amortised to microseconds per request).

Process wiring: the app's lifespan calls ``activate(settings)`` (None when IQA_METRICS_ENABLED is
false: nothing is recorded and ``/metrics`` answers 404), the model loader ``model_loaded(info,
metadata)`` with the metadata it already parsed, and the lifespan ``deactivate()`` at shutdown. The
score route calls ``observe_result(result)`` once per scored image. Each activation registers its
metrics on a private ``CollectorRegistry``; tests build ``GatewayMetrics(CollectorRegistry())`` directly.

Multiprocess (uvicorn --workers N): with ``PROMETHEUS_MULTIPROC_DIR`` set (an empty, writable folder,
before the workers start) prometheus-client keeps every value in per-process files and ``/metrics``
aggregates all workers' files: counters and histograms sum; in-flight sums the live workers
(``livesum``); the model info and the drift gauges show the maximum over the live workers
(``livemax``): each worker keeps its own drift window of the scores *it* served, so the exported
drift is the worst worker's (docs/METRICS.md).
"""

from __future__ import annotations

import logging
import math
import os
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
    Histogram,
    PlatformCollector,
    ProcessCollector,
)
from prometheus_client.exposition import choose_encoder

from serving.drift import DriftWindow, ReferenceDistribution
from serving.pipeline import STAGES

if TYPE_CHECKING:
    from serving.backends.base import ModelInfo
    from serving.pipeline import ScoreResult
    from serving.settings import Settings

__all__ = [
    "KNOWN_STAGES",
    "MODES",
    "SCORE_BUCKETS",
    "DriftConfig",
    "GatewayMetrics",
    "activate",
    "active",
    "deactivate",
    "exposition",
    "model_loaded",
    "observe_result",
]

logger = logging.getLogger(__name__)

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
KNOWN_STAGES = (*STAGES, "probe")
MODES = ("plain", "median", "jpeg")
UNMATCHED_ROUTE = "unmatched"

REQUEST_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0, 2.5, 5.0, 10.0)
STAGE_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
SCORE_BUCKETS = tuple(float(b) for b in range(5, 101, 5))  # the reference histogram's 20 bins over [0, 100]
ABS_DELTA_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.0, 3.0, 5.0, 7.5, 10.0, 15.0, 20.0, 30.0, 50.0)
# linearity: the FGSM step's score change over its first-order prediction, max over crops (clean
# images: median ~0.35, calibrated threshold ~0.8; docs/PROBE.md)
LINEARITY_BUCKETS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0, 1.25, 1.5, 2.0, 3.0)


@dataclass(frozen=True)
class DriftConfig:
    """Sliding-window size, the size the gauges wait for, the recompute period and the PSI bins."""

    window: int = 500
    min_scores: int = 100
    recompute_every: int = 20
    bins: int = 10

    @classmethod
    def from_settings(cls, settings: Settings) -> DriftConfig:
        return cls(
            window=settings.drift_window,
            min_scores=min(settings.drift_min_scores, settings.drift_window),
            recompute_every=settings.drift_recompute_every,
            bins=settings.drift_bins,
        )


def gate_verdict(metadata: Mapping[str, Any]) -> str:
    """The gate verdict in metadata.json: "passed", "failed", or "ungated" without a record."""
    gate = metadata.get("gate")
    if not isinstance(gate, Mapping) or not isinstance(gate.get("passed"), bool):
        return "ungated"
    return "passed" if gate["passed"] else "failed"


class GatewayMetrics:
    """The gateway's metrics on ``registry`` (None: not registered, as in multiprocess mode)."""

    def __init__(self, registry: CollectorRegistry | None, drift: DriftConfig | None = None) -> None:
        r = registry
        self.drift_config = drift or DriftConfig()
        self.requests = Counter(
            "iqa_http_requests_total", "HTTP requests by route template and status code.",
            ["route", "code"], registry=r,
        )  # fmt: skip
        self.request_duration = Histogram(
            "iqa_http_request_duration_seconds", "Whole-request duration by route template.",
            ["route"], buckets=REQUEST_BUCKETS, registry=r,
        )  # fmt: skip
        self.in_flight = Gauge(
            "iqa_http_requests_in_flight", "HTTP requests being served.",
            registry=r, multiprocess_mode="livesum",
        )  # fmt: skip
        self.stage_duration = Histogram(
            "iqa_stage_duration_seconds", "Seconds per scoring pipeline stage (ScoreResult.timings).",
            ["stage"], buckets=STAGE_BUCKETS, registry=r,
        )  # fmt: skip
        self.score = Histogram(
            "iqa_score", "Returned quality scores on [0, 100] by scoring mode.",
            ["mode"], buckets=SCORE_BUCKETS, registry=r,
        )  # fmt: skip
        self.drift_psi = Gauge(
            "iqa_score_drift_psi", "PSI of the recent plain scores against the model's reference scores.",
            ["model"], registry=r, multiprocess_mode="livemax",
        )  # fmt: skip
        self.drift_ks = Gauge(
            "iqa_score_drift_ks", "Two-sample KS statistic of the recent plain scores vs the reference.",
            ["model"], registry=r, multiprocess_mode="livemax",
        )  # fmt: skip
        self.drift_window_scores = Gauge(
            "iqa_score_drift_window_scores", "Scores in the window the drift gauges were computed on.",
            ["model"], registry=r, multiprocess_mode="livemax",
        )  # fmt: skip
        self.probes = Counter("iqa_probes_total", "Scored requests that ran the FGSM self-probe.", registry=r)
        self.probe_flagged = Counter(
            "iqa_probe_flagged_total", "Probed requests flagged as likely adversarial.", registry=r
        )
        self.probe_abs_delta = Histogram(
            "iqa_probe_abs_delta", "|adv_score - score| of probed requests, in score points.",
            buckets=ABS_DELTA_BUCKETS, registry=r,
        )  # fmt: skip
        self.probe_linearity = Histogram(
            "iqa_probe_linearity", "Probe linearity of probed requests: max over crops of the FGSM step's "
            "score change over its first-order prediction (ratio).",
            buckets=LINEARITY_BUCKETS, registry=r,
        )  # fmt: skip
        self.model_info = Gauge(
            "iqa_model_info", "The served model: name, version, architecture and gate verdict (value 1).",
            ["model", "version", "architecture", "gate"], registry=r, multiprocess_mode="livemax",
        )  # fmt: skip
        self._stage = {stage: self.stage_duration.labels(stage) for stage in KNOWN_STAGES}
        self._score = {mode: self.score.labels(mode) for mode in MODES}
        self._drift: DriftWindow | None = None
        self._drift_model = ""
        self._since_recompute = 0
        self._lock = threading.Lock()

    # -- per request ------------------------------------------------------------------------------
    def observe_request(self, route: str, code: int, seconds: float) -> None:
        self.requests.labels(route, str(code)).inc()
        self.request_duration.labels(route).observe(seconds)

    def observe_result(self, result: ScoreResult) -> None:
        """Stage latencies, the score, the drift window and the probe outcome of one scored image."""
        for stage, seconds in result.timings.items():
            child = self._stage.get(stage)
            if child is not None:
                child.observe(seconds)
        mode = result.mode
        score_child = self._score.get(mode)
        if score_child is not None:
            score_child.observe(result.score)
        if mode == "plain" and self._drift is not None:
            self._add_to_drift(result.score)
        probe = result.probe
        if probe is not None:
            self.probes.inc()
            self.probe_abs_delta.observe(abs(probe.delta))
            if probe.linearity is not None and math.isfinite(probe.linearity):
                self.probe_linearity.observe(probe.linearity)
            if probe.flagged:
                self.probe_flagged.inc()

    # -- model ------------------------------------------------------------------------------------
    def set_model(self, info: ModelInfo, metadata: Mapping[str, Any]) -> None:
        """Model info and the drift reference (drift stays off without reference scores)."""
        self.model_info.clear()
        self.model_info.labels(info.name, str(info.version), info.architecture, gate_verdict(metadata)).set(1)
        cfg = self.drift_config
        try:
            reference = ReferenceDistribution.from_metadata(metadata, cfg.bins)
            if reference is None:
                logger.warning("drift off: metadata.json of %s has no reference scores", info.name)
        except ValueError as exc:
            logger.warning("drift off: unusable reference_distribution in metadata.json (%s)", exc)
            reference = None
        with self._lock:
            self._drift = DriftWindow(reference, cfg.window) if reference is not None else None
            self._drift_model = info.name
            self._since_recompute = 0

    def _add_to_drift(self, score: float) -> None:
        window = self._drift
        assert window is not None
        window.add(score)
        with self._lock:
            self._since_recompute += 1
            due = self._since_recompute >= self.drift_config.recompute_every
            if due:
                self._since_recompute = 0
        if due and len(window) >= self.drift_config.min_scores:
            self.update_drift()

    def update_drift(self) -> None:
        """Recompute PSI and KS of the current window now and set the gauges."""
        window = self._drift
        stats = window.compute() if window is not None else None
        if stats is None or not (math.isfinite(stats.psi) and math.isfinite(stats.ks)):
            return
        self.drift_psi.labels(self._drift_model).set(stats.psi)
        self.drift_ks.labels(self._drift_model).set(stats.ks)
        self.drift_window_scores.labels(self._drift_model).set(stats.n)


# -- the process's active metrics (set by the app's lifespan) ----------------------------------------

_active: GatewayMetrics | None = None
_exposition_registry: CollectorRegistry | None = None


def multiprocess_dir() -> str | None:
    return os.environ.get(MULTIPROC_ENV) or None


def activate(settings: Settings) -> GatewayMetrics | None:
    """Create this process's metrics (None and nothing recorded when IQA_METRICS_ENABLED is false)."""
    global _active, _exposition_registry
    if not settings.metrics_enabled:
        _active, _exposition_registry = None, None
        return None
    drift = DriftConfig.from_settings(settings)
    path = multiprocess_dir()
    if path is not None:
        from prometheus_client import multiprocess

        metrics = GatewayMetrics(None, drift)
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry, path=path)
    else:
        registry = CollectorRegistry()
        ProcessCollector(registry=registry)
        PlatformCollector(registry=registry)
        GCCollector(registry=registry)
        metrics = GatewayMetrics(registry, drift)
    _active, _exposition_registry = metrics, registry
    return metrics


def deactivate() -> None:
    """Forget the active metrics; in multiprocess mode drop this worker's live gauges."""
    global _active, _exposition_registry
    if _active is not None and multiprocess_dir() is not None:
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(os.getpid())
    _active, _exposition_registry = None, None


def active() -> GatewayMetrics | None:
    return _active


def observe_result(result: ScoreResult) -> None:
    """Record one scored image (the score route's one call); a no-op when metrics are off."""
    metrics = _active
    if metrics is not None:
        metrics.observe_result(result)


def model_loaded(info: ModelInfo, metadata: Mapping[str, Any]) -> None:
    """Set the model info and the drift reference from the served version's parsed metadata.json."""
    metrics = _active
    if metrics is not None:
        metrics.set_model(info, metadata)


def exposition(accept: str | None) -> tuple[bytes, str] | None:
    """The text exposition of the active registry in the format ``accept`` asks for (None if off)."""
    registry = _exposition_registry
    if registry is None:
        return None
    encoder, content_type = choose_encoder(accept or "")
    return encoder(registry), content_type
