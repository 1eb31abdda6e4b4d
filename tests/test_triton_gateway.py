"""Gateway -> Triton -> gateway (``IQA_BACKEND=triton``), with Triton killed under load and restarted.

One tritonserver (CPU config, the committed repository) that the test kills with SIGKILL and starts
again on the same ports. The gateway's scores equal its embedded ONNX Runtime scores; while Triton is
down, ``/score`` answers 503 with a JSON error within about a second and ``/readyz`` 503; when Triton
is back the gateway serves again by itself. The Triton client's retries ride over the restart.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest

from clients.triton_client import TritonIQAClient
from clients.triton_common import RetryPolicy
from export.triton_server import TritonServer
from serving.model_store import resolve_model_version
from tests.conftest import run_gateway
from tests.triton_fixtures import MODEL_REPOSITORY, TOL, gateway_scores, photo_bytes, start_server

LATEST = resolve_model_version(MODEL_REPOSITORY, "iqa", "latest").version


@pytest.fixture(scope="module")
def server() -> Iterator[TritonServer]:
    triton = start_server()
    try:
        yield triton
    finally:
        triton.stop()


def _score(url: str, data: bytes, timeout: float = 15.0) -> tuple[int, dict, float]:
    started = time.monotonic()
    response = httpx.post(
        f"{url}/score", content=data, headers={"Content-Type": "image/jpeg"}, timeout=timeout
    )
    return response.status_code, response.json(), time.monotonic() - started


def _wait(predicate, timeout: float) -> float:  # type: ignore[no-untyped-def]
    started = time.monotonic()
    while not predicate():
        if time.monotonic() - started > timeout:
            raise TimeoutError(f"condition not met after {timeout} s")
        time.sleep(0.1)
    return time.monotonic() - started


def _restart(server: TritonServer) -> None:
    server.process = None
    server.start(timeout=240)


def test_gateway_on_triton_survives_a_triton_crash(server: TritonServer) -> None:
    photos = photo_bytes()
    expected = gateway_scores(photos)
    env = {"IQA_BACKEND": "triton", "IQA_TRITON_URL": server.grpc_url, "IQA_TRITON_POLL_S": "0.25"}
    with run_gateway(MODEL_REPOSITORY, model_name="iqa", env=env) as gateway:
        ready = httpx.get(f"{gateway.url}/readyz").json()
        assert ready["status"] == "ready" and ready["version"] == LATEST
        for name, data in photos.items():
            status, body, _ = _score(gateway.url, data)
            assert status == 200, body
            assert abs(body["score"] - expected[name]) < TOL and body["crops"] == 5

        # load from four threads; SIGKILL Triton in the middle of it
        stop = threading.Event()
        outcomes: list[tuple[int, dict, float]] = []
        answered_at: dict[int, float] = {}  # id(outcome) -> when it came back

        def load() -> None:
            while not stop.is_set():
                outcome = _score(gateway.url, photos["rocket.jpg"])
                answered_at[id(outcome)] = time.monotonic()
                outcomes.append(outcome)

        with ThreadPoolExecutor(4) as pool:
            for _ in range(4):
                pool.submit(load)
            time.sleep(1.5)
            server.kill()
            killed_time = time.monotonic()
            killed_at = len(outcomes)
            time.sleep(2.0)
            stop.set()
        # the first 503 after the kill, and the last 200 (work in flight at the kill may still finish)
        first_503 = min(answered_at[id(o)] for o in outcomes if o[0] == 503) - killed_time
        print(f"Triton SIGKILL under load: first 503 after {first_503:.3f} s; {len(outcomes)} answers")
        assert first_503 < 1.0
        statuses = {status for status, _, _ in outcomes}
        assert statuses <= {200, 503}, statuses
        assert any(s == 200 for s, _, _ in outcomes[:killed_at]), "no request succeeded before the kill"
        after = outcomes[killed_at + 4 :]  # what was sent once the kill had happened
        assert after and all(s == 503 for s, _, _ in after), [s for s, _, _ in after]
        for status, body, seconds in outcomes:
            if status == 503:
                assert body["error"]["code"] in ("backend_unavailable", "not_ready") and seconds < 1.5, (
                    body,
                    seconds,
                )
        assert httpx.get(f"{gateway.url}/readyz").status_code == 503
        status, body, seconds = _score(gateway.url, photos["chelsea.png"])
        assert (status, body["error"]["code"]) == (503, "backend_unavailable") and seconds < 1.0

        # Triton comes back on the same ports: the gateway recovers by itself
        restart_began = time.monotonic()
        _restart(server)
        triton_back = time.monotonic() - restart_began
        waited = _wait(lambda: httpx.get(f"{gateway.url}/readyz").status_code == 200, timeout=15)
        status, body, _ = _score(gateway.url, photos["chelsea.png"])
        assert status == 200 and abs(body["score"] - expected["chelsea.png"]) < TOL, body
        print(f"Triton restart took {triton_back:.1f} s; the gateway was ready {waited:.2f} s after Triton")
        assert waited < 10
        assert "Traceback" not in gateway.log()


def test_client_retries_ride_over_a_restart(server: TritonServer) -> None:
    photos = photo_bytes()
    expected = gateway_scores({"coffee.webp": photos["coffee.webp"]})["coffee.webp"]
    server.kill()
    retry = RetryPolicy(attempts=60, initial_backoff_s=0.1, max_backoff_s=0.5)
    with TritonIQAClient(server.grpc_url, retry=retry, batch_size=1) as client:
        restarter = threading.Timer(1.0, _restart, args=(server,))
        restarter.start()
        started = time.monotonic()
        try:
            (score,) = client.score_request([photos["coffee.webp"]])
        finally:
            restarter.join()
        assert time.monotonic() - started > 1.0  # it really waited for the server
        assert abs(float(score) - expected) < TOL
    assert np.isfinite(score)
