"""Hardening of the gateway: API keys, CORS, the minimum image side, the decode limit, SIGTERM draining.

Keys, small images and shutdown run against real uvicorn subprocesses; CORS and the decode limit use
the in-process app (the same ``create_app``) where a header or a setting is all that changes.
"""

from __future__ import annotations

import hashlib
import signal
import threading
import time
import warnings
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from serving.app import create_app
from serving.auth import ApiKeys, presented_key
from serving.errors import DeadlineExceeded
from serving.pipeline import Scorer
from serving.settings import Settings
from tests.conftest import TINY_MODEL_NAME, GatewayServer, run_gateway
from tests.hardening_fixtures import jpeg_bytes
from tests.triton_fixtures import encode

with warnings.catch_warnings():
    warnings.filterwarnings("ignore", message=r"Using `httpx` with `starlette\.testclient` is deprecated")
    from fastapi.testclient import TestClient

ALPHA = "alpha-0123456789-secret"
BETA = "beta-9876543210-secret"
BETA_DIGEST = hashlib.sha256(BETA.encode()).hexdigest()


def _wait_ready(client: TestClient, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while client.get("/readyz").status_code != 200:
        assert time.monotonic() < deadline, "the in-process app never became ready"
        time.sleep(0.02)


def _error(response: httpx.Response, status: int, code: str) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert body["error"]["code"] == code and body["error"]["message"]
    return body


# ----------------------------------------------------------------------------- API keys


def test_api_keys_parse_and_verify_in_constant_time_form() -> None:
    keys = ApiKeys.parse(f" {ALPHA} ,, sha256:{BETA_DIGEST.upper()} ")
    assert keys.enabled and len(keys.digests) == 2
    assert keys.verify(ALPHA) and keys.verify(BETA)
    assert not keys.verify(BETA_DIGEST)  # the digest itself is not a key
    assert not keys.verify(ALPHA[:-1]) and not keys.verify("") and not keys.verify(None)
    assert ALPHA not in repr(keys) and BETA_DIGEST not in repr(keys)
    assert not ApiKeys.parse("").enabled and not ApiKeys.parse(" , ").enabled
    assert ALPHA not in repr(Settings(api_keys=ALPHA))  # SecretStr: settings dumps never show a key


def test_presented_key_from_either_header() -> None:
    assert presented_key([(b"authorization", f"Bearer {ALPHA}".encode())]) == ALPHA
    assert presented_key([(b"Authorization", f"bearer   {ALPHA} ".encode())]) == ALPHA
    assert presented_key([(b"x-api-key", BETA.encode())]) == BETA
    assert presented_key([(b"authorization", b"Basic dXNlcjpwYXNz")]) is None
    assert presented_key([(b"authorization", b"Bearer ")]) is None
    assert presented_key([]) is None


@pytest.fixture(scope="module")
def keyed_gateway(tiny_model_repository: Path) -> Iterator[GatewayServer]:
    env = {"IQA_API_KEYS": f"{ALPHA},sha256:{BETA_DIGEST}", "IQA_LOG_LEVEL": "debug"}
    with run_gateway(tiny_model_repository, env=env) as server:
        yield server


def test_keys_guard_scoring_and_leave_probes_open(keyed_gateway: GatewayServer) -> None:
    url, image = keyed_gateway.url, jpeg_bytes()
    headers = {"content-type": "image/jpeg"}
    for extra in (
        {},
        {"Authorization": "Bearer wrong"},
        {"X-API-Key": BETA_DIGEST},
        {"Authorization": ALPHA},
    ):
        response = httpx.post(f"{url}/score", content=image, headers=headers | extra)
        _error(response, 401, "unauthorized")
        assert response.headers["www-authenticate"].startswith("Bearer")
    ok_bearer = httpx.post(
        f"{url}/score", content=image, headers=headers | {"Authorization": f"Bearer {ALPHA}"}
    )
    ok_header = httpx.post(f"{url}/score", content=image, headers=headers | {"X-API-Key": BETA})
    assert ok_bearer.status_code == ok_header.status_code == 200, (ok_bearer.text, ok_header.text)
    assert ok_bearer.json()["score"] == ok_header.json()["score"]
    assert httpx.get(f"{url}/healthz").status_code == 200
    assert httpx.get(f"{url}/readyz").status_code == 200
    assert httpx.get(f"{url}/metrics").status_code != 401  # open unless IQA_AUTH_METRICS=true
    _error(httpx.get(f"{url}/openapi.json"), 401, "unauthorized")
    _error(httpx.get(f"{url}/no-such-route"), 401, "unauthorized")  # no route probing without a key
    log = keyed_gateway.log()
    assert "POST /score" in log  # the access log is on, and it is debug level
    for secret in (ALPHA, BETA, BETA_DIGEST):
        assert secret not in log


def test_metrics_can_require_a_key(tiny_model_repository: Path) -> None:
    settings = Settings(model_repository=tiny_model_repository, api_keys=ALPHA, auth_metrics=True)
    with TestClient(create_app(settings)) as client:
        assert client.get("/metrics").status_code == 401
        assert client.get("/metrics", headers={"X-API-Key": ALPHA}).status_code != 401
        assert client.get("/healthz").status_code == 200


# ----------------------------------------------------------------------------- CORS


def test_cors_is_off_by_default_and_follows_the_setting(tiny_model_repository: Path) -> None:
    origin = {"Origin": "https://ads.example"}
    preflight = origin | {
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "x-api-key",
    }
    with TestClient(create_app(Settings(model_repository=tiny_model_repository))) as client:
        assert "access-control-allow-origin" not in client.get("/healthz", headers=origin).headers
        assert client.options("/score", headers=preflight).status_code == 405
    settings = Settings(
        model_repository=tiny_model_repository, cors_origins="https://ads.example", api_keys=ALPHA
    )
    with TestClient(create_app(settings)) as client:
        assert (
            client.get("/healthz", headers=origin).headers["access-control-allow-origin"] == origin["Origin"]
        )
        answer = client.options("/score", headers=preflight)  # a preflight carries no key: CORS answers it
        assert answer.status_code == 200 and answer.headers["access-control-allow-origin"] == origin["Origin"]
        other = client.get("/healthz", headers={"Origin": "https://evil.example"})
        assert "access-control-allow-origin" not in other.headers


# ----------------------------------------------------------------------------- small images


@pytest.mark.parametrize("size", [(1, 1), (10, 10), (31, 400), (400, 31)])
def test_image_below_the_minimum_side_is_422(tiny_gateway: GatewayServer, size: tuple[int, int]) -> None:
    width, height = size
    data = encode(np.full((height, width, 3), 120, dtype=np.uint8), "PNG")
    body = _error(
        httpx.post(f"{tiny_gateway.url}/score", content=data, headers={"content-type": "image/png"}),
        422,
        "image_too_small",
    )
    assert f"{width}x{height}" in body["error"]["message"] and "32" in body["error"]["message"]


def test_image_at_the_minimum_side_is_scored(tiny_gateway: GatewayServer) -> None:
    data = encode(np.full((32, 500, 3), 120, dtype=np.uint8), "PNG")
    response = httpx.post(f"{tiny_gateway.url}/score", content=data, headers={"content-type": "image/png"})
    assert response.status_code == 200 and 0.0 <= response.json()["score"] <= 100.0


# ----------------------------------------------------------------------------- decode limit


def test_a_decode_past_its_limit_stops_before_inference(tiny_model_repository: Path) -> None:
    from serving.model_store import resolve_model_version

    model = resolve_model_version(tiny_model_repository, TINY_MODEL_NAME, "latest")
    calls: list[int] = []

    class CountingBackend:
        model_info = model.info

        def infer(self, batch: np.ndarray) -> np.ndarray:
            calls.append(len(batch))
            return np.full(len(batch), 50.0, dtype=np.float32)

    data = jpeg_bytes(2000, 1500)
    with pytest.raises(DeadlineExceeded, match="decoding took longer"):
        Scorer(CountingBackend(), model.preprocess, decode_timeout_s=1e-6).score(data)  # type: ignore[arg-type]
    assert calls == []
    assert Scorer(CountingBackend(), model.preprocess, decode_timeout_s=30.0).score(data).score == 50.0  # type: ignore[arg-type]
    assert calls == [model.preprocess.num_eval_crops]
    settings = Settings(model_repository=tiny_model_repository, decode_timeout_s=1e-6)
    with TestClient(create_app(settings)) as client:
        _wait_ready(client)
        response = client.post("/score", content=data, headers={"content-type": "image/jpeg"})
    _error(response, 504, "deadline_exceeded")  # type: ignore[arg-type]


# ----------------------------------------------------------------------------- SIGTERM


def test_sigterm_drains_in_flight_work_and_refuses_new(costly_model_repository: Path) -> None:
    """Slow requests in flight finish with 200; once SIGTERM arrives, /readyz and new requests get 503
    for the drain period, then the listener closes (connection refused) and the process ends cleanly."""
    env = {
        "IQA_MODEL_VERSION": "1",  # ~1 s a request on one core
        "IQA_ORT_INTRA_OP_THREADS": "1",
        "IQA_MAX_CONCURRENCY": "3",
        "IQA_SHUTDOWN_DRAIN_S": "1.0",
    }
    image = jpeg_bytes()
    with run_gateway(costly_model_repository, model_version=1, env=env) as server:
        results: list[tuple[int, float]] = []

        def slow_request() -> None:
            started = time.monotonic()
            response = httpx.post(
                f"{server.url}/score", content=image, headers={"content-type": "image/jpeg"}, timeout=60
            )
            results.append((response.status_code, time.monotonic() - started))

        threads = [threading.Thread(target=slow_request) for _ in range(3)]
        for thread in threads:
            thread.start()
        time.sleep(0.4)  # the three are being scored now
        server.process.send_signal(signal.SIGTERM)
        time.sleep(0.1)
        ready = httpx.get(f"{server.url}/readyz", timeout=5)
        _error(ready, 503, "shutting_down")
        refused = httpx.post(f"{server.url}/score", content=image, headers={"content-type": "image/jpeg"})
        _error(refused, 503, "shutting_down")
        assert refused.headers["retry-after"] == "1"
        for thread in threads:
            thread.join(timeout=60)
        assert [status for status, _ in results] == [200, 200, 200], results
        assert all(seconds > 0.4 for _, seconds in results)  # they really were in flight at SIGTERM
        time.sleep(1.5)  # past the drain period: the listener is closed
        with pytest.raises(httpx.TransportError):
            httpx.get(f"{server.url}/healthz", timeout=2)
        # uvicorn finishes its graceful shutdown, then re-raises the signal it caught (exit by SIGTERM)
        assert server.process.wait(timeout=30) in (0, -signal.SIGTERM)
        log = server.log()
    assert "Traceback" not in log and "Application shutdown complete" in log
