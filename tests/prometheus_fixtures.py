"""Helpers of tests/test_prometheus_dashboard.py: Debian's real Prometheus on loopback, the committed
dashboard's and alert rules' queries, and generated image streams for the drift alert.

The binaries come from Debian's ``prometheus`` package (``make system-deps``). When they are missing
the helpers install the package if running as root, else skip (fail under CI).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import yaml
from PIL import Image

REPO_ROOT = Path(__file__).resolve().parents[1]
PROMETHEUS_DIR = REPO_ROOT / "clients" / "prometheus"
DASHBOARD = REPO_ROOT / "clients" / "grafana" / "dashboards" / "iqa-gateway.json"
# Grafana's interval variables, replaced by a window that covers the test's traffic.
GRAFANA_VARIABLES = {"$__rate_interval": "30s", "$__interval": "5s", "$__range": "5m"}
_ALERT_EXPR = re.compile(r"^(?P<query>.+?)\s*(?P<op>>|<|>=|<=|==|!=)\s*(?P<threshold>-?[0-9.]+)$", re.S)


def binaries() -> tuple[str, str]:
    """Paths of ``prometheus`` and ``promtool``; apt-get installs them as root, else skip / fail (CI)."""
    found = shutil.which("prometheus"), shutil.which("promtool")
    if None in found and os.geteuid() == 0 and shutil.which("apt-get"):
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        for cmd in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", "prometheus"]):
            subprocess.run(cmd, env=env, check=False, capture_output=True, timeout=600)
        found = shutil.which("prometheus"), shutil.which("promtool")
    if None in found:
        message = "Debian's prometheus package is not installed (make system-deps)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return found[0] or "", found[1] or ""


def dashboard_panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    """Every panel that is not a row, also those nested in collapsed rows."""
    out: list[dict[str, Any]] = []
    for panel in dashboard["panels"]:
        if panel.get("type") == "row":
            out.extend(panel.get("panels", []))
        else:
            out.append(panel)
    return out


def grafana_to_promql(expr: str) -> str:
    for variable, value in GRAFANA_VARIABLES.items():
        expr = expr.replace(variable, value)
    assert "$" not in expr, f"unhandled Grafana variable in {expr!r}"
    return expr


def dashboard_queries() -> dict[str, str]:
    """``"<panel title> / <refId>"`` -> PromQL of every panel target, variables substituted."""
    dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    return {
        f"{panel['title']} / {target['refId']}": grafana_to_promql(target["expr"])
        for panel in dashboard_panels(dashboard)
        for target in panel["targets"]
    }


def alert_rules() -> list[dict[str, Any]]:
    groups = yaml.safe_load((PROMETHEUS_DIR / "alerts.yml").read_text(encoding="utf-8"))["groups"]
    return [rule for group in groups for rule in group["rules"] if "alert" in rule]


def alert_query(expr: str) -> tuple[str, str, float]:
    """An alert's ``<query> <op> <threshold>`` split in three (the rules file's convention)."""
    match = _ALERT_EXPR.match(" ".join(expr.split()))
    assert match, f"alert expression is not '<query> <op> <threshold>': {expr!r}"
    return match["query"], match["op"], float(match["threshold"])


def fast_rules_file(dest: Path, for_: str = "0s") -> Path:
    """A copy of alerts.yml whose alerts fire as soon as their condition holds."""
    rules = yaml.safe_load((PROMETHEUS_DIR / "alerts.yml").read_text(encoding="utf-8"))
    for group in rules["groups"]:
        for rule in group["rules"]:
            if "alert" in rule:
                rule["for"] = for_
    path = dest / "alerts.yml"
    path.write_text(yaml.safe_dump(rules, sort_keys=False), encoding="utf-8")
    return path


def scrape_config_file(dest: Path, targets: dict[str, str], interval: str = "1s") -> Path:
    """The committed prometheus.yml with the test's targets, a short interval and the test rules."""
    config = yaml.safe_load((PROMETHEUS_DIR / "prometheus.yml").read_text(encoding="utf-8"))
    config["global"].update(scrape_interval=interval, scrape_timeout=interval, evaluation_interval=interval)
    config["rule_files"] = [str(fast_rules_file(dest))]
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert set(targets) == set(jobs), f"scrape jobs {sorted(jobs)} != {sorted(targets)}"
    for name, target in targets.items():
        jobs[name]["static_configs"] = [{"targets": [target]}]
    path = dest / "prometheus.yml"
    path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    return path


@dataclass
class PrometheusServer:
    url: str
    process: subprocess.Popen[bytes]
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def query(self, promql: str) -> list[dict[str, Any]]:
        """The instant vector of ``promql`` now (raises on a query error, with Prometheus's message)."""
        response = httpx.get(f"{self.url}/api/v1/query", params={"query": promql}, timeout=10)
        body = response.json()
        assert body.get("status") == "success", f"{promql!r}: {body.get('error', body)}"
        assert body["data"]["resultType"] == "vector", body["data"]["resultType"]
        return list(body["data"]["result"])

    def wait_for(self, promql: str, timeout: float, predicate: Any = bool) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        result = self.query(promql)
        while not predicate(result) and time.monotonic() < deadline:
            time.sleep(0.25)
            result = self.query(promql)
        return result


@contextlib.contextmanager
def run_prometheus(binary: str, config: Path, port: int) -> Iterator[PrometheusServer]:
    data = Path(tempfile.mkdtemp(prefix="prometheus-"))
    log_path = data / "prometheus.log"
    cmd = [
        binary,
        f"--config.file={config}",
        f"--storage.tsdb.path={data / 'tsdb'}",
        f"--web.listen-address=127.0.0.1:{port}",
        "--log.level=warn",
    ]
    with log_path.open("wb") as log:
        process = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    server = PrometheusServer(f"http://127.0.0.1:{port}", process, log_path)
    try:
        deadline = time.monotonic() + 30
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"prometheus exited with {process.returncode}:\n{server.log()[-4000:]}")
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(f"{server.url}/-/ready", timeout=2).status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise TimeoutError(f"prometheus not ready:\n{server.log()[-4000:]}")
            time.sleep(0.1)
        yield server
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)
        shutil.rmtree(data, ignore_errors=True)


# -- image streams ------------------------------------------------------------------------------------


def photo(seed: int, size: tuple[int, int] = (128, 96)) -> np.ndarray:
    """A smooth random colour field with mild sensor noise (a stand-in photo)."""
    rng = np.random.default_rng(seed)
    base = Image.fromarray(rng.uniform(0, 255, (6, 8, 3)).astype(np.uint8)).resize(
        size, Image.Resampling.BICUBIC
    )
    image = np.asarray(base, dtype=np.float64) + rng.normal(0, 8, (size[1], size[0], 3))
    return np.clip(image, 0, 255).astype(np.uint8)


def washed_out(image: np.ndarray) -> np.ndarray:
    """Low contrast, overexposed: the shifted stream of the drift test."""
    return np.clip(image.astype(np.float64) * 0.4 + 150, 0, 255).astype(np.uint8)


def png(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()
