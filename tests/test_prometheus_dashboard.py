"""The committed Prometheus config, alert rules and Grafana dashboard, proven on a real Prometheus.

Debian's ``promtool`` checks the config and the rules and runs their unit tests. Then Debian's
``prometheus`` scrapes, every second, a real gateway (uvicorn, a tiny scorer with its FGSM probe, a
reference distribution in its metadata.json) and a real tritonserver (the wheel's, the committed
``iqa`` model) that have both served traffic. Every dashboard panel's query and every alert's query
must return data, and the drift alert must stay quiet on an in-distribution stream and fire on a
shifted one.
"""

from __future__ import annotations

import json
import math
import re
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pytest
import yaml
from prometheus_client import CollectorRegistry

from export.triton_server import TritonServer
from serving.backends.base import ModelInfo
from serving.backends.onnxruntime_backend import OnnxRuntimeBackend
from serving.drift import DriftWindow, ReferenceDistribution
from serving.metrics import GatewayMetrics
from serving.pipeline import Scorer
from tests.conftest import TINY_MODEL_NAME, GatewayServer, free_port, run_gateway
from tests.probe_fixtures import PROBE_PREPROCESS, write_probe_repository
from tests.prometheus_fixtures import (
    DASHBOARD,
    PROMETHEUS_DIR,
    PrometheusServer,
    alert_query,
    alert_rules,
    binaries,
    dashboard_panels,
    dashboard_queries,
    photo,
    png,
    run_prometheus,
    scrape_config_file,
    washed_out,
)
from tests.triton_fixtures import MODEL_REPOSITORY, require_triton

pytestmark = pytest.mark.timeout(300)

DRIFT_WINDOW, DRIFT_BINS = 100, 5
GATEWAY_ENV = {
    "IQA_DRIFT_WINDOW": str(DRIFT_WINDOW),
    "IQA_DRIFT_MIN_SCORES": "50",
    "IQA_DRIFT_RECOMPUTE_EVERY": "1",
    "IQA_DRIFT_BINS": str(DRIFT_BINS),
    "IQA_ORT_INTRA_OP_THREADS": "1",
}
TRITON_METRICS = {
    "nv_inference_request_success",
    "nv_inference_request_failure",
    "nv_inference_count",
    "nv_inference_exec_count",
    "nv_inference_request_duration_us",
    "nv_inference_queue_duration_us",
    "nv_inference_compute_infer_duration_us",
    "nv_inference_pending_request_count",
}
REFERENCE_SEEDS = range(1000, 1400)
CLEAN_SEEDS = range(0, 120)
SHIFTED_SEEDS = range(200, 200 + DRIFT_WINDOW)


@pytest.fixture(scope="module")
def tools() -> tuple[str, str]:
    return binaries()


def _promtool(promtool: str, *args: str) -> str:
    done = subprocess.run([promtool, *args], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, f"promtool {' '.join(args)}:\n{done.stdout}\n{done.stderr}"
    return done.stdout + done.stderr


def test_promtool_checks_the_config_the_rules_and_their_unit_tests(
    tools: tuple[str, str], tmp_path: Path
) -> None:
    _, promtool = tools
    out = _promtool(promtool, "check", "config", str(PROMETHEUS_DIR / "prometheus.yml"))
    assert "1 rule files found" in out
    assert f"{len(alert_rules())} rules found" in _promtool(
        promtool, "check", "rules", str(PROMETHEUS_DIR / "alerts.yml")
    )
    assert "SUCCESS" in _promtool(promtool, "test", "rules", str(PROMETHEUS_DIR / "alerts_test.yml"))
    test_copy = scrape_config_file(tmp_path, {"iqa-gateway": "127.0.0.1:1", "triton": "127.0.0.1:2"})
    _promtool(promtool, "check", "config", str(test_copy))


def test_alerts_and_dashboard_name_only_metrics_that_exist() -> None:
    """Every iqa_* series a query reads is one serving/metrics.py defines; nv_* ones are Triton's."""
    registry = CollectorRegistry()
    GatewayMetrics(registry)
    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "gauge": ("",)}
    defined = {f.name + suffix for f in registry.collect() for suffix in suffixes.get(f.type, ("",))}
    assert {"iqa_http_requests_total", "iqa_score_bucket", "iqa_score_drift_psi", "iqa_model_info"} <= defined
    queries = list(dashboard_queries().values()) + [rule["expr"] for rule in alert_rules()]
    for query in queries:
        for name in re.findall(r"\b((?:iqa|nv)_[a-z_]+)", query):
            assert name in defined or name in TRITON_METRICS, f"unknown metric {name} in {query!r}"
    assert {alert["alert"] for alert in alert_rules()} >= {
        "IqaScoreDrift", "IqaProbeFlagRate", "IqaHighErrorRate", "IqaHighLatencyP99",
    }  # fmt: skip
    drift = next(rule for rule in alert_rules() if rule["alert"] == "IqaScoreDrift")
    assert alert_query(drift["expr"])[1:] == (">", 0.2)


def test_dashboard_and_provisioning_are_well_formed() -> None:
    dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    panels = dashboard_panels(dashboard)
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    assert [v["name"] for v in dashboard["templating"]["list"]] == ["datasource"]
    cells: set[tuple[int, int]] = set()
    for panel in panels:
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        assert panel["targets"] and all(t["expr"].strip() for t in panel["targets"]), panel["title"]
        pos = panel["gridPos"]
        assert pos["x"] + pos["w"] <= 24
        mine = {(pos["x"] + i, pos["y"] + j) for i in range(pos["w"]) for j in range(pos["h"])}
        assert not cells & mine, f"panel {panel['title']!r} overlaps another"
        cells |= mine
    text = json.dumps(dashboard)
    for metric in TRITON_METRICS | {"iqa_score_drift_psi", "iqa_probe_flagged_total", "iqa_score_bucket"}:
        assert metric in text, metric
    grafana = DASHBOARD.parents[1] / "provisioning"
    datasource = yaml.safe_load((grafana / "datasources" / "prometheus.yml").read_text())["datasources"][0]
    assert datasource["type"] == "prometheus" and datasource["url"].endswith(":9090")
    provider = yaml.safe_load((grafana / "dashboards" / "iqa.yml").read_text())["providers"][0]
    assert provider["type"] == "file" and provider["options"]["path"]


# -- a live stack: gateway + tritonserver + prometheus ------------------------------------------------


@dataclass
class Stack:
    prometheus: PrometheusServer
    gateway: GatewayServer
    reference: list[float]
    clean_scores: list[float]
    probed: int


@pytest.fixture(scope="module")
def drift_repository(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[float]]:
    """A tiny scorer with its probe (tests/probe_fixtures.py) whose metadata.json reference
    distribution is the scorer's own scores on 400 clean photos."""
    root = write_probe_repository(tmp_path_factory.mktemp("drift_repository"))
    version = root / TINY_MODEL_NAME / "1"
    backend = OnnxRuntimeBackend(version / "model.onnx", ModelInfo(TINY_MODEL_NAME, 1), intra_op_threads=1)
    backend.load()
    scorer = Scorer(backend, PROBE_PREPROCESS)
    reference = [scorer.score(png(photo(seed))).score for seed in REFERENCE_SEEDS]
    backend.close()
    meta = json.loads((version / "metadata.json").read_text(encoding="utf-8"))
    meta.update(reference_distribution={"scores": reference, "n": len(reference)}, gate={"passed": True})
    (version / "metadata.json").write_text(json.dumps(meta), encoding="utf-8")
    return root, reference


def _score(client: httpx.Client, gateway: GatewayServer, data: bytes, probe: bool = False) -> dict:
    response = client.post(
        f"{gateway.url}/score", params={"probe": "true"} if probe else None, content=data,
        headers={"content-type": "image/png"},
    )  # fmt: skip
    assert response.status_code == 200, response.text
    return response.json()


def _triton_infer(triton: TritonServer, n: int) -> None:
    import tritonclient.grpc as grpcclient

    client = grpcclient.InferenceServerClient(triton.grpc_url)
    for i in range(n):
        tensor = grpcclient.InferInput("image", [2, 224, 224, 3], "UINT8")
        tensor.set_data_from_numpy(np.stack([photo(500 + i, (224, 224))] * 2))
        client.infer("iqa", [tensor])


def _serve_traffic(
    gateway: GatewayServer, triton: TritonServer, seeds: range, clean_scores: list[float]
) -> int:
    """Clean photos (every 10th probed), a few bad images, Triton inferences; returns probes run."""
    probed = 0
    with httpx.Client(timeout=30) as client:
        for i, seed in enumerate(seeds):
            body = _score(client, gateway, png(photo(seed)), probe=i % 10 == 0)
            clean_scores.append(body["score"])
            assert ("probe" in body) == (i % 10 == 0), body
            probed += "probe" in body
            if i % 20 == 0:
                bad = client.post(
                    f"{gateway.url}/score", content=b"not an image", headers={"content-type": "image/png"}
                )
                assert bad.status_code == 400
            if i % 6 == 0:
                _triton_infer(triton, 1)
    return probed


@pytest.fixture(scope="module")
def stack(
    tools: tuple[str, str],
    drift_repository: tuple[Path, list[float]],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Stack]:
    require_triton()
    repository, reference = drift_repository
    triton = TritonServer(MODEL_REPOSITORY, model_control="explicit", load_models=("iqa",))
    triton.start(wait=False)
    try:
        with run_gateway(repository, env=GATEWAY_ENV) as gateway:
            triton.wait_ready(240)
            targets = {
                "iqa-gateway": gateway.url.removeprefix("http://"),
                "triton": f"127.0.0.1:{triton.metrics_port}",
            }
            config = scrape_config_file(tmp_path_factory.mktemp("prometheus"), targets)
            with run_prometheus(tools[0], config, free_port()) as prometheus:
                up = prometheus.wait_for("up == 1", 30, lambda r: len(r) == 2)
                assert len(up) == 2, f"targets not up: {prometheus.query('up')}\n{prometheus.log()[-3000:]}"
                clean_scores: list[float] = []
                # a first round creates every labelled series, so the main round shows as a rate
                probed = _serve_traffic(gateway, triton, CLEAN_SEEDS[:5], clean_scores)
                time.sleep(2.5)
                probed += _serve_traffic(gateway, triton, CLEAN_SEEDS[5:], clean_scores)
                time.sleep(3.0)  # three scrapes and rule evaluations after the last request
                yield Stack(prometheus, gateway, reference, clean_scores, probed)
    finally:
        triton.stop()


def _has_data(result: list[dict]) -> bool:
    return any(math.isfinite(float(series["value"][1])) for series in result)


def test_every_panel_and_alert_query_returns_data(stack: Stack) -> None:
    queries = dict(dashboard_queries())
    for rule in alert_rules():
        queries[f"alert {rule['alert']}"] = alert_query(rule["expr"])[0]
    empty = []
    for name, promql in queries.items():
        result = stack.prometheus.query(promql)
        if not _has_data(result):
            empty.append(f"{name}: {promql} -> {result}")
    assert not empty, "queries without data:\n" + "\n".join(empty)
    assert len(queries) >= 25
    assert stack.probed == 1 + 12  # every 10th request of the two rounds (5 and 115 requests)


def _psi_of(reference: list[float], scores: list[float]) -> float:
    window = DriftWindow(ReferenceDistribution.from_scores(reference, DRIFT_BINS), DRIFT_WINDOW)
    for s in scores:
        window.add(s)
    stats = window.compute()
    assert stats is not None
    return stats.psi


def test_drift_alert_is_quiet_in_distribution_and_fires_on_a_shifted_stream(stack: Stack) -> None:
    prometheus = stack.prometheus
    psi_query = "max by (model) (iqa_score_drift_psi)"
    [series] = prometheus.query(psi_query)
    expected = _psi_of(stack.reference, stack.clean_scores[-DRIFT_WINDOW:])
    assert float(series["value"][1]) == pytest.approx(expected, rel=1e-9)
    assert expected < 0.2
    assert prometheus.query('ALERTS{alertname="IqaScoreDrift"}') == []

    shifted: list[float] = []
    with httpx.Client(timeout=30) as client:
        for seed in SHIFTED_SEEDS:
            shifted.append(_score(client, stack.gateway, png(washed_out(photo(seed))))["score"])
    firing = prometheus.wait_for('ALERTS{alertname="IqaScoreDrift", alertstate="firing"}', 20)
    assert len(firing) == 1 and firing[0]["metric"]["model"] == TINY_MODEL_NAME, prometheus.query("ALERTS")
    expected = _psi_of(stack.reference, shifted)  # the window now holds only shifted scores
    assert expected > 0.2
    [series] = prometheus.wait_for(psi_query, 10, lambda r: r and float(r[0]["value"][1]) == expected)
    assert float(series["value"][1]) == pytest.approx(expected, rel=1e-9)
