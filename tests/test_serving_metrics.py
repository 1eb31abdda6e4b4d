"""Gateway metrics: GatewayMetrics on a private registry, and the names a real uvicorn gateway exposes on
/metrics after it scored an image (PSI and KS themselves: tests/test_drift.py)."""

from __future__ import annotations

import dataclasses
import io
import json
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from serving.backends.base import ModelInfo
from serving.drift import DriftWindow, ReferenceDistribution
from serving.metrics import SCORE_BUCKETS, DriftConfig, GatewayMetrics
from serving.pipeline import ScoreResult
from serving.probe import ProbeResult
from tests.conftest import TINY_MODEL_NAME, TINY_PREPROCESS, write_model_version

# -- GatewayMetrics on a private registry ---------------------------------------------------------


def _probed(result: ScoreResult, delta: float, flagged: bool, linearity: float | None = None) -> ScoreResult:
    probe = ProbeResult(
        adv_score=result.score + delta, delta=delta, epsilon=1 / 255, flagged=flagged, linearity=linearity
    )
    return dataclasses.replace(result, probe=probe)


def _value(registry: CollectorRegistry, name: str, **labels: str) -> float | None:
    return registry.get_sample_value(name, labels)


def test_observe_result_records_stages_score_and_probe() -> None:
    registry = CollectorRegistry()
    m = GatewayMetrics(registry)
    timings = {"decode": 0.004, "validate": 1e-6, "preprocess": 0.002, "infer": 0.03, "postprocess": 1e-5}
    m.observe_result(ScoreResult(score=42.0, crops=5, timings={**timings, "bogus_stage": 1.0}))
    for stage, seconds in timings.items():
        assert _value(registry, "iqa_stage_duration_seconds_count", stage=stage) == 1
        assert _value(registry, "iqa_stage_duration_seconds_sum", stage=stage) == pytest.approx(seconds)
    assert _value(registry, "iqa_stage_duration_seconds_count", stage="bogus_stage") is None  # bounded
    assert _value(registry, "iqa_score_bucket", mode="plain", le="40.0") == 0
    assert _value(registry, "iqa_score_bucket", mode="plain", le="45.0") == 1
    assert _value(registry, "iqa_score_sum", mode="plain") == 42.0
    assert _value(registry, "iqa_probes_total") == 0

    m.observe_result(_probed(ScoreResult(score=60.0, crops=5, timings={"probe": 0.05}), -7.5, True, 0.85))
    m.observe_result(_probed(ScoreResult(score=60.0, crops=5), 0.5, False, float("inf")))  # not observed
    m.observe_result(_probed(ScoreResult(score=60.0, crops=5), 0.5, False))  # an older graph: no linearity
    assert _value(registry, "iqa_probes_total") == 3
    assert _value(registry, "iqa_probe_flagged_total") == 1
    assert _value(registry, "iqa_probe_abs_delta_sum") == pytest.approx(8.5)  # |−7.5| + |0.5| + |0.5|
    assert _value(registry, "iqa_probe_abs_delta_bucket", le="0.5") == 2
    assert _value(registry, "iqa_probe_abs_delta_bucket", le="7.5") == 3
    assert _value(registry, "iqa_probe_linearity_count") == 1
    assert _value(registry, "iqa_probe_linearity_bucket", le="0.8") == 0
    assert _value(registry, "iqa_probe_linearity_bucket", le="0.9") == 1
    assert _value(registry, "iqa_stage_duration_seconds_count", stage="probe") == 1
    assert list(SCORE_BUCKETS) == [5.0 * i for i in range(1, 21)]


def test_drift_gauges_follow_the_window_and_ignore_robust_modes() -> None:
    registry = CollectorRegistry()
    m = GatewayMetrics(registry, DriftConfig(window=40, min_scores=20, recompute_every=10, bins=4))
    ref_scores = list(np.linspace(40.0, 70.0, 100))
    meta = {"reference_distribution": {"scores": ref_scores}, "gate": {"passed": False}}
    m.set_model(ModelInfo("iqa", 7, "tiny"), meta)
    labels = {"model": "iqa", "version": "7", "architecture": "tiny", "gate": "failed"}
    assert _value(registry, "iqa_model_info", **labels) == 1
    shifted = [90.0 + 0.1 * i for i in range(19)]
    for s in shifted:
        m.observe_result(ScoreResult(score=s, crops=5))
    assert _value(registry, "iqa_score_drift_psi", model="iqa") is None  # fewer than min_scores
    m.observe_result(ScoreResult(score=95.0, crops=5))  # the 20th: due (every 10) and enough scores
    reference = ReferenceDistribution.from_scores(ref_scores, 4)
    window = DriftWindow(reference, 40)
    for s in [*shifted, 95.0]:
        window.add(s)
    stats = window.compute()
    assert stats is not None
    assert _value(registry, "iqa_score_drift_psi", model="iqa") == pytest.approx(stats.psi)
    assert _value(registry, "iqa_score_drift_ks", model="iqa") == 1.0
    assert _value(registry, "iqa_score_drift_window_scores", model="iqa") == 20
    # median-mode scores are recorded in iqa_score{mode="median"} but never enter the drift window
    for _ in range(30):
        m.observe_result(ScoreResult(score=10.0, crops=5, mode="median"))
    assert _value(registry, "iqa_score_count", mode="median") == 30
    assert _value(registry, "iqa_score_drift_window_scores", model="iqa") == 20
    # reference-like scores push the shifted ones out of the window: KS falls back near 0
    for s in np.linspace(40.0, 70.0, 40):
        m.observe_result(ScoreResult(score=float(s), crops=5))
    assert _value(registry, "iqa_score_drift_window_scores", model="iqa") == 40
    assert _value(registry, "iqa_score_drift_ks", model="iqa") < 0.1
    assert _value(registry, "iqa_score_drift_psi", model="iqa") < 0.05


def test_no_reference_means_no_drift_gauges_and_an_ungated_model() -> None:
    registry = CollectorRegistry()
    m = GatewayMetrics(registry, DriftConfig(window=10, min_scores=1, recompute_every=1))
    m.set_model(ModelInfo("iqa", 1), {})
    m.observe_result(ScoreResult(score=50.0, crops=5))
    assert _value(registry, "iqa_score_drift_psi", model="iqa") is None
    assert _value(registry, "iqa_model_info", model="iqa", version="1", architecture="", gate="ungated") == 1


# -- a real gateway's /metrics ---------------------------------------------------------------------

EXPECTED_NAMES = {
    "iqa_http_requests": "counter",
    "iqa_http_request_duration_seconds": "histogram",
    "iqa_http_requests_in_flight": "gauge",
    "iqa_stage_duration_seconds": "histogram",
    "iqa_score": "histogram",
    "iqa_score_drift_psi": "gauge",
    "iqa_score_drift_ks": "gauge",
    "iqa_score_drift_window_scores": "gauge",
    "iqa_probes": "counter",
    "iqa_probe_flagged": "counter",
    "iqa_probe_abs_delta": "histogram",
    "iqa_probe_linearity": "histogram",
    "iqa_model_info": "gauge",
}


def _png(seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (96, 128, 3), dtype=np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def reference_repository(tiny_model_repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model with a reference distribution and a passed gate in its metadata.json."""
    root = tmp_path_factory.mktemp("metrics_repository")
    reference = {"scores": [float(s) for s in np.linspace(30.0, 70.0, 50)]}
    write_model_version(
        root, TINY_MODEL_NAME, 1, tiny_model_repository / "tiny.onnx", TINY_PREPROCESS,
        reference_distribution=reference, gate={"passed": True},
    )  # fmt: skip
    return root


def _in_flight_during_a_slow_upload(url: str) -> float:
    """iqa_http_requests_in_flight read while a /score body is still arriving (the request is in flight)."""
    data = _png(7)
    started = threading.Event()

    def body() -> Iterator[bytes]:
        yield data[:100]
        started.set()
        time.sleep(1.5)
        yield data[100:]

    with ThreadPoolExecutor(1) as pool:
        upload = pool.submit(
            httpx.post, f"{url}/score", content=body(), headers={"content-type": "image/png"}, timeout=30
        )
        assert started.wait(10)
        time.sleep(0.3)
        text = httpx.get(f"{url}/metrics").text
        assert upload.result().status_code == 200
    [value] = [
        s.value for f in text_string_to_metric_families(text) for s in f.samples
        if s.name == "iqa_http_requests_in_flight"
    ]  # fmt: skip
    return value


def test_metrics_endpoint_exposes_every_metric_after_a_scored_request(
    gateway_factory: Callable[..., Any], reference_repository: Path
) -> None:
    env = {"IQA_DRIFT_MIN_SCORES": "2", "IQA_DRIFT_RECOMPUTE_EVERY": "1", "IQA_ORT_INTRA_OP_THREADS": "1"}
    with gateway_factory(reference_repository, env=env) as server:
        scores = []
        for seed in range(3):
            r = httpx.post(f"{server.url}/score", content=_png(seed), headers={"content-type": "image/png"})
            assert r.status_code == 200, r.text
            scores.append(r.json()["score"])
        assert httpx.get(f"{server.url}/no/such/page").status_code == 404
        response = httpx.get(f"{server.url}/metrics")
        assert _in_flight_during_a_slow_upload(server.url) == 1  # after the scrape the counts read
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    families = {f.name: f for f in text_string_to_metric_families(response.text)}
    for name, kind in EXPECTED_NAMES.items():
        assert name in families, f"{name} missing from /metrics"
        assert families[name].type == kind
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value for f in families.values() for s in f.samples
    }
    assert samples[("iqa_http_requests_total", (("code", "200"), ("route", "/score")))] == 3
    assert samples[("iqa_http_requests_total", (("code", "404"), ("route", "unmatched")))] == 1
    assert samples[("iqa_score_count", (("mode", "plain"),))] == 3
    assert samples[("iqa_score_sum", (("mode", "plain"),))] == pytest.approx(sum(scores), rel=1e-9)
    assert samples[("iqa_stage_duration_seconds_count", (("stage", "infer"),))] == 3
    assert samples[("iqa_score_drift_window_scores", (("model", "iqa"),))] == 3
    reference = ReferenceDistribution.from_scores(np.linspace(30.0, 70.0, 50), bins=10)
    window = DriftWindow(reference, 500)
    for s in scores:
        window.add(s)
    stats = window.compute()
    assert stats is not None
    assert samples[("iqa_score_drift_ks", (("model", "iqa"),))] == pytest.approx(stats.ks, abs=1e-12)
    assert samples[("iqa_score_drift_psi", (("model", "iqa"),))] == pytest.approx(stats.psi, rel=1e-9)
    info = (("architecture", "tiny_iqa"), ("gate", "passed"), ("model", "iqa"), ("version", "1"))
    assert samples[("iqa_model_info", info)] == 1
    assert samples[("iqa_http_requests_in_flight", ())] == 0  # the scrape does not count itself
    assert any(name.startswith("process_") for name in families)  # the process collector


def test_metrics_can_be_switched_off(gateway_factory: Callable[..., Any], reference_repository: Path) -> None:
    with gateway_factory(reference_repository, env={"IQA_METRICS_ENABLED": "false"}) as server:
        r = httpx.post(f"{server.url}/score", content=_png(0), headers={"content-type": "image/png"})
        assert r.status_code == 200
        response = httpx.get(f"{server.url}/metrics")
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "not_found"


def test_requests_answered_before_routing_keep_their_route_label(
    gateway_factory: Callable[..., Any], reference_repository: Path
) -> None:
    """A 401 from the API-key middleware (before the router) is counted under its route template."""
    with gateway_factory(reference_repository, env={"IQA_API_KEYS": "s3cret-key"}) as server:
        r = httpx.post(f"{server.url}/score", content=_png(0), headers={"content-type": "image/png"})
        assert r.status_code == 401
        assert httpx.get(f"{server.url}/score").status_code == 401
        assert httpx.get(f"{server.url}/ui/../../etc/passwd").status_code in (401, 404)
        text = httpx.get(f"{server.url}/metrics").text
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for f in text_string_to_metric_families(text)
        for s in f.samples
    }
    assert samples[("iqa_http_requests_total", (("code", "401"), ("route", "/score")))] == 2
    routes = {labels[1][1] for name, labels in samples if name == "iqa_http_requests_total"}
    assert routes <= {"/score", "/readyz", "/ui/{name}", "unmatched"}, routes  # never a raw path


def _scores_per_worker(multiproc_dir: Path) -> dict[str, float]:
    """/score requests each worker counted in its own file (counter_<pid>.db)."""
    from prometheus_client.mmap_dict import MmapedDict

    out = {}
    for path in multiproc_dir.glob("counter_*.db"):
        total = 0.0
        for key, value, _, _ in MmapedDict.read_all_values_from_file(str(path)):
            _, name, labels, _ = json.loads(key)
            if name == "iqa_http_requests_total" and labels.get("route") == "/score":
                total += value
        out[path.stem.removeprefix("counter_")] = total
    return out


def test_multiprocess_mode_aggregates_every_worker(
    gateway_factory: Callable[..., Any], reference_repository: Path, tmp_path: Path
) -> None:
    """uvicorn --workers 2 with PROMETHEUS_MULTIPROC_DIR: any worker's /metrics counts both workers."""
    multiproc_dir = tmp_path / "prometheus-multiproc"
    multiproc_dir.mkdir()
    env = {"PROMETHEUS_MULTIPROC_DIR": str(multiproc_dir), "IQA_ORT_INTRA_OP_THREADS": "1"}
    with gateway_factory(reference_repository, env=env, uvicorn_args=("--workers", "2")) as server:
        deadline = time.monotonic() + 60  # both workers loaded: each wrote its model-info gauge
        while len(list(multiproc_dir.glob("gauge_livemax_*.db"))) < 2 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert len(list(multiproc_dir.glob("gauge_livemax_*.db"))) == 2, server.log()[-3000:]

        def post(seed: int) -> int:
            with httpx.Client(timeout=30) as client:  # a connection each: the kernel spreads them
                headers = {"content-type": "image/png"}
                return client.post(f"{server.url}/score", content=_png(seed), headers=headers).status_code

        n = 0
        with ThreadPoolExecutor(4) as pool:
            for _ in range(10):  # batches until both workers have served some (usually the first)
                codes = list(pool.map(post, range(n, n + 20)))
                assert codes == [200] * 20
                n += 20
                per_worker = _scores_per_worker(multiproc_dir)
                if sorted(v > 0 for v in per_worker.values()) == [True, True]:
                    break
        assert sorted(v > 0 for v in per_worker.values()) == [True, True], per_worker  # both served
        # The middleware counts a request as its response completes, which may be just after the client
        # has read it: give the last few a moment to land.
        deadline = time.monotonic() + 5
        while sum(per_worker.values()) < n and time.monotonic() < deadline:
            time.sleep(0.05)
            per_worker = _scores_per_worker(multiproc_dir)
        assert sum(per_worker.values()) == n, per_worker
        for _ in range(6):  # whichever worker answers, it reports both workers' requests
            with httpx.Client() as client:  # a fresh connection per scrape
                text = client.get(f"{server.url}/metrics").text
            samples = {
                (s.name, tuple(sorted(s.labels.items()))): s.value
                for f in text_string_to_metric_families(text)
                for s in f.samples
            }
            assert samples[("iqa_http_requests_total", (("code", "200"), ("route", "/score")))] == n
            assert samples[("iqa_score_count", (("mode", "plain"),))] == n
            assert samples[("iqa_http_requests_in_flight", ())] == 0  # livesum; scrapes not counted
            info = (("architecture", "tiny_iqa"), ("gate", "passed"), ("model", "iqa"), ("version", "1"))
            assert samples[("iqa_model_info", info)] == 1  # livemax over the two workers


def test_overhead_bench_runs_both_gateways_and_reports_ratios(reference_repository: Path) -> None:
    """bench/metrics_overhead.py, briefly: two real gateways, alternating rounds, scraped, JSON out."""
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    cmd = [sys.executable, "bench/metrics_overhead.py", "--model-repository", str(reference_repository),
           "--rounds", "2", "--requests", "24", "--scrape-interval", "0.05", "--json"]  # fmt: skip
    done = subprocess.run(cmd, cwd=root, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout)
    assert result["rounds"] == 2 and result["scrapes"] >= 1
    for kind in ("cpu", "wall"):
        ratios = result[kind]["round_ratios"]
        assert len(ratios) == 2
        assert result[kind]["ratio_on_off"] > 0 and result[kind]["ms_per_image_off"] > 0  # summed: many ticks
