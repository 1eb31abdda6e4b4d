"""Gateway tests: a real uvicorn server on a tiny exported model, plus in-process lifecycle checks."""

from __future__ import annotations

import io
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image

from serving import backends
from serving.app import create_app
from serving.backends.base import ModelInfo
from serving.backends.onnxruntime_backend import OnnxRuntimeBackend
from serving.errors import ModelLoadError
from serving.model_store import ModelVersion, list_versions, resolve_model_version
from serving.pipeline import score_image_bytes
from serving.settings import Settings
from tests.conftest import TINY_MODEL_NAME, GatewayServer

with warnings.catch_warnings():  # this starlette nags about httpx vs httpx2; httpx is what we have
    warnings.filterwarnings("ignore", message=r"Using `httpx` with `starlette\.testclient` is deprecated")
    from fastapi.testclient import TestClient

# ----------------------------------------------------------------------------- images


def _picture(width: int, height: int, seed: int = 0) -> np.ndarray:
    """A smooth gradient with texture, so crops differ and JPEG has something to encode."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    base = np.stack([xx / max(width - 1, 1), yy / max(height - 1, 1), (xx + yy) / (width + height)], axis=-1)
    noise = rng.normal(0.0, 0.08, size=(height, width, 3))
    return (np.clip(base + noise, 0.0, 1.0) * 255).astype(np.uint8)


def _encode(image: Image.Image, fmt: str, **kwargs: Any) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format=fmt, **kwargs)
    return buf.getvalue()


def _jpeg(width: int = 320, height: int = 240, seed: int = 0) -> bytes:
    return _encode(Image.fromarray(_picture(width, height, seed)), "JPEG", quality=90)


def _png(width: int = 200, height: int = 300, seed: int = 1) -> bytes:
    return _encode(Image.fromarray(_picture(width, height, seed)), "PNG")


def _png_alpha() -> bytes:
    rgb = _picture(160, 120, seed=2)
    alpha = np.tile(np.linspace(0, 255, 160, dtype=np.uint8), (120, 1))[..., None]
    return _encode(Image.fromarray(np.concatenate([rgb, alpha], axis=-1), mode="RGBA"), "PNG")


def _grayscale() -> bytes:
    return _encode(Image.fromarray(_picture(150, 150, seed=3)).convert("L"), "JPEG")


IMAGES: dict[str, Callable[[], bytes]] = {
    "jpeg": _jpeg,
    "png": _png,
    "png_alpha": _png_alpha,
    "grayscale": _grayscale,
    "smallest_32x32": lambda: _png(32, 32, seed=4),  # IQA_MIN_IMAGE_SIDE; smaller gets 422
    "banner_728x90": lambda: _jpeg(728, 90, seed=5),
}


# ----------------------------------------------------------------------------- helpers


@pytest.fixture(scope="module")
def tiny_version(tiny_model_repository: Path) -> ModelVersion:
    return resolve_model_version(tiny_model_repository, TINY_MODEL_NAME, "latest")


@pytest.fixture(scope="module")
def local_backend(tiny_version: ModelVersion) -> OnnxRuntimeBackend:
    backend = OnnxRuntimeBackend(tiny_version.model_path, tiny_version.info)
    backend.load()
    return backend


def _assert_error(response: httpx.Response, status: int, code: str) -> None:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"}
    assert body["error"]["code"] == code
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    assert "Traceback" not in response.text


# ----------------------------------------------------------------------------- real server


def test_healthz(tiny_gateway: GatewayServer) -> None:
    response = httpx.get(f"{tiny_gateway.url}/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


def test_readyz_reports_latest_version(tiny_gateway: GatewayServer) -> None:
    response = httpx.get(f"{tiny_gateway.url}/readyz")
    assert response.status_code == 200
    assert response.json() == {"status": "ready", "model": "iqa", "version": 3, "architecture": "tiny_iqa"}


def test_score_multipart_jpeg(tiny_gateway: GatewayServer) -> None:
    files = {"file": ("photo.jpg", _jpeg(), "image/jpeg")}
    response = httpx.post(f"{tiny_gateway.url}/score", files=files)
    assert response.status_code == 200, response.text
    body = response.json()
    assert set(body) == {"score", "model", "version", "crops"}
    assert 0.0 <= body["score"] <= 100.0
    assert (body["model"], body["version"], body["crops"]) == ("iqa", 3, 5)


def test_score_raw_png_with_timings(tiny_gateway: GatewayServer) -> None:
    response = httpx.post(
        f"{tiny_gateway.url}/score?timings=true", content=_png(), headers={"content-type": "image/png"}
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert 0.0 <= body["score"] <= 100.0
    assert set(body["timings"]) == {"decode", "validate", "preprocess", "infer", "postprocess"}
    assert all(t >= 0.0 for t in body["timings"].values())


@pytest.mark.parametrize("kind", sorted(IMAGES))
def test_served_score_equals_in_process_score(
    tiny_gateway: GatewayServer, tiny_version: ModelVersion, local_backend: OnnxRuntimeBackend, kind: str
) -> None:
    data = IMAGES[kind]()
    response = httpx.post(
        f"{tiny_gateway.url}/score", content=data, headers={"content-type": "application/octet-stream"}
    )
    assert response.status_code == 200, response.text
    expected = score_image_bytes(data, local_backend, tiny_version.preprocess)
    assert 0.0 <= response.json()["score"] <= 100.0
    assert abs(response.json()["score"] - expected) < 1e-4


def test_different_images_get_different_scores(tiny_gateway: GatewayServer) -> None:
    scores = {
        httpx.post(
            f"{tiny_gateway.url}/score", content=IMAGES[k](), headers={"content-type": "image/*"}
        ).json()["score"]
        for k in ("jpeg", "png", "banner_728x90")
    }
    assert len(scores) == 3  # the tiny model is not a constant, so the parity test means something


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(np.random.default_rng(7).bytes(5000), id="random_bytes"),
        pytest.param(_jpeg()[:2000], id="truncated_jpeg"),
        pytest.param(b"\x89PNG\r\n\x1a\n" + b"\x00" * 64, id="png_header_only"),
    ],
)
def test_corrupt_image_is_400(tiny_gateway: GatewayServer, data: bytes) -> None:
    raw = httpx.post(f"{tiny_gateway.url}/score", content=data, headers={"content-type": "image/jpeg"})
    _assert_error(raw, 400, "invalid_image")
    assert " at 0x" not in raw.text  # no object reprs from the decoder
    multipart = httpx.post(f"{tiny_gateway.url}/score", files={"file": ("x.jpg", data, "image/jpeg")})
    _assert_error(multipart, 400, "invalid_image")


def test_empty_body_is_400(tiny_gateway: GatewayServer) -> None:
    _assert_error(
        httpx.post(f"{tiny_gateway.url}/score", content=b"", headers={"content-type": "image/png"}),
        400,
        "invalid_image",
    )
    _assert_error(
        httpx.post(f"{tiny_gateway.url}/score", files={"file": ("x.png", b"", "image/png")}),
        400,
        "invalid_image",
    )


@pytest.mark.parametrize(
    "content_type", ["text/plain", "application/json", "application/x-www-form-urlencoded"]
)
def test_non_image_content_type_is_415(tiny_gateway: GatewayServer, content_type: str) -> None:
    response = httpx.post(f"{tiny_gateway.url}/score", content=_png(), headers={"content-type": content_type})
    _assert_error(response, 415, "unsupported_media_type")


def test_multipart_without_file_part_is_415(tiny_gateway: GatewayServer) -> None:
    no_file = httpx.post(f"{tiny_gateway.url}/score", data={"image": "x"}, files={"other": ("a.png", _png())})
    _assert_error(no_file, 415, "unsupported_media_type")
    text_part = httpx.post(f"{tiny_gateway.url}/score", files={"file": ("a.txt", b"hello", "text/plain")})
    _assert_error(text_part, 415, "unsupported_media_type")


def test_malformed_multipart_is_400(tiny_gateway: GatewayServer) -> None:
    response = httpx.post(
        f"{tiny_gateway.url}/score",
        content=b'--xyz\r\nContent-Disposition: form-data; name="file"\r\n\r\nabc',
        headers={"content-type": "multipart/form-data"},  # no boundary
    )
    _assert_error(response, 400, "invalid_request")


def test_validation_and_routing_errors_share_the_shape(tiny_gateway: GatewayServer) -> None:
    bad_query = httpx.post(
        f"{tiny_gateway.url}/score?timings=maybe", content=_png(), headers={"content-type": "image/png"}
    )
    _assert_error(bad_query, 422, "validation_error")
    _assert_error(httpx.get(f"{tiny_gateway.url}/nope"), 404, "not_found")
    _assert_error(httpx.get(f"{tiny_gateway.url}/score"), 405, "method_not_allowed")


# ----------------------------------------------------------------------------- limits, failures


@pytest.fixture(scope="module")
def small_limits_gateway(
    tiny_model_repository: Path, gateway_factory: Callable[..., Any]
) -> Iterator[GatewayServer]:
    env = {"IQA_MAX_BODY_BYTES": "4096", "IQA_MAX_PIXELS": "20000"}
    with gateway_factory(tiny_model_repository, model_version=1, env=env) as server:
        yield server


def test_explicit_version_is_served(small_limits_gateway: GatewayServer) -> None:
    assert httpx.get(f"{small_limits_gateway.url}/readyz").json()["version"] == 1


def test_body_over_limit_is_413(small_limits_gateway: GatewayServer) -> None:
    big = _png(64, 64) + b"\x00" * 8192
    url = f"{small_limits_gateway.url}/score"
    _assert_error(httpx.post(url, content=big, headers={"content-type": "image/png"}), 413, "too_large")
    _assert_error(httpx.post(url, files={"file": ("a.png", big, "image/png")}), 413, "too_large")

    def chunked() -> Iterator[bytes]:  # no Content-Length: the streaming limit must catch it
        for i in range(0, len(big), 1024):
            yield big[i : i + 1024]

    _assert_error(httpx.post(url, content=chunked(), headers={"content-type": "image/png"}), 413, "too_large")


def test_pixels_over_limit_is_413(small_limits_gateway: GatewayServer) -> None:
    flat = _encode(Image.new("RGB", (200, 200), (10, 200, 30)), "PNG")  # 40k px, a few hundred bytes
    assert len(flat) < 4096
    response = httpx.post(
        f"{small_limits_gateway.url}/score", content=flat, headers={"content-type": "image/png"}
    )
    _assert_error(response, 413, "too_large")
    ok = _encode(Image.new("RGB", (120, 120), (10, 200, 30)), "PNG")  # 14.4k px
    small = httpx.post(f"{small_limits_gateway.url}/score", content=ok, headers={"content-type": "image/png"})
    assert small.status_code == 200, small.text


def test_missing_repository_stays_live_but_not_ready(
    tmp_path: Path, gateway_factory: Callable[..., Any]
) -> None:
    missing = tmp_path / "no_such_repository"
    with gateway_factory(missing, wait_ready=False, timeout=30.0) as server:
        assert httpx.get(f"{server.url}/healthz").status_code == 200
        deadline = time.monotonic() + 20
        while "model load failed" not in server.log() and time.monotonic() < deadline:
            time.sleep(0.1)
        ready = httpx.get(f"{server.url}/readyz")
        _assert_error(ready, 503, "not_ready")
        assert "failed" in ready.json()["error"]["message"]
        assert str(missing) not in ready.text  # paths stay in the log, not in responses
        score = httpx.post(f"{server.url}/score", content=_png(), headers={"content-type": "image/png"})
        _assert_error(score, 503, "not_ready")
        failures = [line for line in server.log().splitlines() if "model load failed" in line]
        assert (
            len(failures) == 1 and "does not exist" in failures[0] and "IQA_MODEL_REPOSITORY" in failures[0]
        )
        assert "Traceback" not in server.log()


# ----------------------------------------------------------------------------- model store


def test_model_store_resolves_versions(tiny_model_repository: Path) -> None:
    assert list_versions(tiny_model_repository, TINY_MODEL_NAME) == [1, 3]  # "2" has no model.onnx
    assert resolve_model_version(tiny_model_repository, TINY_MODEL_NAME, "latest").version == 3
    chosen = resolve_model_version(tiny_model_repository, TINY_MODEL_NAME, 1)
    assert chosen.version == 1 and chosen.preprocess.crop_size == 64
    with pytest.raises(ModelLoadError, match="version 2 of model 'iqa' not found"):
        resolve_model_version(tiny_model_repository, TINY_MODEL_NAME, 2)
    with pytest.raises(ModelLoadError, match="model 'other' not found"):
        resolve_model_version(tiny_model_repository, "other")


def test_model_store_rejects_bad_metadata(tmp_path: Path, tiny_model_repository: Path) -> None:
    folder = tmp_path / "iqa" / "1"
    folder.mkdir(parents=True)
    (folder / "model.onnx").write_bytes((tiny_model_repository / "iqa" / "1" / "model.onnx").read_bytes())
    with pytest.raises(ModelLoadError, match=r"metadata\.json is missing"):
        resolve_model_version(tmp_path, "iqa")
    (folder / "metadata.json").write_text('{"name": "iqa", "preprocess": {"crop_size": 100}}')
    with pytest.raises(ModelLoadError, match="invalid 'preprocess'"):
        resolve_model_version(tmp_path, "iqa")


# ----------------------------------------------------------------------------- in-process lifecycle


class _FakeBackend:
    """Loads only when ``release`` is set; scores every crop 50, or raises when ``broken``."""

    def __init__(self, release: threading.Event, broken: bool = False) -> None:
        self.release, self.broken, self._loaded = release, broken, False

    @property
    def model_info(self) -> ModelInfo:
        return ModelInfo("fake", 7)

    def load(self) -> None:
        if not self.release.wait(timeout=30):
            raise ModelLoadError("fake backend was never released")
        self._loaded = True

    def ready(self) -> bool:
        return self._loaded

    def infer(self, batch: np.ndarray) -> np.ndarray:
        if self.broken and batch[0, 0, 0, 0] != 128:  # let the warm-up batch (all 128) through
            raise RuntimeError("secret internal detail")
        return np.full(len(batch), 50.0, dtype=np.float32)

    def close(self) -> None:
        self._loaded = False


def _fake_app(monkeypatch: pytest.MonkeyPatch, repo: Path, backend: _FakeBackend) -> TestClient:
    monkeypatch.setitem(backends.BACKENDS, "fake", lambda model, settings: backend)
    settings = Settings(model_repository=repo, model_name=TINY_MODEL_NAME, backend="fake")
    return TestClient(create_app(settings), raise_server_exceptions=False)


def _wait_ready(client: TestClient, timeout: float = 10.0) -> httpx.Response:
    deadline = time.monotonic() + timeout
    response = client.get("/readyz")
    while response.status_code != 200 and time.monotonic() < deadline:
        time.sleep(0.02)
        response = client.get("/readyz")
    return response


def test_not_ready_until_loaded_and_warm(
    monkeypatch: pytest.MonkeyPatch, tiny_model_repository: Path
) -> None:
    release = threading.Event()
    with _fake_app(monkeypatch, tiny_model_repository, _FakeBackend(release)) as client:
        assert client.get("/healthz").status_code == 200
        _assert_error(client.get("/readyz"), 503, "not_ready")
        _assert_error(
            client.post("/score", content=_png(), headers={"content-type": "image/png"}), 503, "not_ready"
        )
        release.set()
        assert _wait_ready(client).json() == {"status": "ready", "model": "fake", "version": 7}
        scored = client.post("/score", content=_png(), headers={"content-type": "image/png"})
        assert scored.json() == {"score": 50.0, "model": "fake", "version": 7, "crops": 5}


def test_unexpected_error_is_generic_500(
    monkeypatch: pytest.MonkeyPatch, tiny_model_repository: Path
) -> None:
    release = threading.Event()
    release.set()
    with _fake_app(monkeypatch, tiny_model_repository, _FakeBackend(release, broken=True)) as client:
        assert _wait_ready(client).status_code == 200
        response = client.post("/score", content=_png(), headers={"content-type": "image/png"})
        _assert_error(response, 500, "internal_error")
        assert "secret" not in response.text
