"""Robust scoring modes (serving/robust_modes.py): POST /score?mode=plain|median|jpeg on a real
uvicorn gateway over the tiny model, and the noise of median smoothing in process."""

from __future__ import annotations

import contextlib
import io
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from serving.backends.onnxruntime_backend import OnnxRuntimeBackend
from serving.model_store import resolve_model_version
from serving.pipeline import Scorer
from serving.robust_modes import JpegPurification, MedianSmoothing, robust_mode
from serving.settings import Settings
from tests.conftest import TINY_MODEL_NAME, TINY_PREPROCESS, GatewayServer


def _picture(width: int = 128, height: int = 96, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    base = np.stack([x * 255 / width, y * 255 / height, 128 + 0 * x], axis=-1)
    return np.clip(base + rng.normal(0, 25, base.shape), 0, 255).astype(np.uint8)


def _encode(image: np.ndarray, fmt: str, **kwargs: object) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format=fmt, **kwargs)
    return buf.getvalue()


def _post(server: GatewayServer, data: bytes, query: str) -> httpx.Response:
    return httpx.post(
        f"{server.url}/score?{query}", content=data, headers={"content-type": "image/png"}, timeout=60
    )


@pytest.fixture(scope="module")
def scorer(tiny_model_repository: Path) -> Scorer:
    version = resolve_model_version(tiny_model_repository, TINY_MODEL_NAME, "latest")
    backend = OnnxRuntimeBackend(version.model_path, version.info)
    backend.load()
    return Scorer(backend, version.preprocess)


@pytest.fixture(scope="module")
def seeded_gateway(
    tiny_model_repository: Path,
    gateway_factory: Callable[..., contextlib.AbstractContextManager[GatewayServer]],
) -> Iterator[GatewayServer]:
    env = {"IQA_ORT_INTRA_OP_THREADS": "1", "IQA_MEDIAN_N": "48", "IQA_MEDIAN_SIGMA": "0.1",
           "IQA_MEDIAN_RADIUS": "0.05", "IQA_MEDIAN_ALPHA": "0.05", "IQA_MEDIAN_SEED": "7",
           "IQA_JPEG_QUALITY": "60"}
    with gateway_factory(tiny_model_repository, env=env) as server:
        yield server


def test_every_mode_returns_a_score_in_range(tiny_gateway: GatewayServer) -> None:
    png = _encode(_picture(), "PNG")
    bodies = {}
    for mode in ("plain", "median", "jpeg"):
        response = _post(tiny_gateway, png, f"mode={mode}&timings=true")
        assert response.status_code == 200, response.text
        body = bodies[mode] = response.json()
        assert 0.0 <= body["score"] <= 100.0
        assert body["crops"] == TINY_PREPROCESS.num_eval_crops
        assert set(body["timings"]) >= {"decode", "validate", "preprocess", "infer", "postprocess"}
    assert "robust" not in bodies["plain"]
    assert _post(tiny_gateway, png, "").json()["score"] == bodies["plain"]["score"]  # default = plain
    robust = bodies["median"]["robust"]
    defaults = Settings()
    assert robust["mode"] == "median"
    assert (robust["n"], robust["sigma"], robust["radius"], robust["alpha"]) == (
        defaults.median_n, defaults.median_sigma, defaults.median_radius, defaults.median_alpha)
    assert robust["lower"] <= bodies["median"]["score"] <= robust["upper"]
    assert robust["lower"] >= 0.0 and robust["upper"] <= 100.0
    assert bodies["jpeg"]["robust"] == {"mode": "jpeg", "quality": defaults.jpeg_quality}


def test_median_settings_are_applied_and_a_fixed_seed_repeats(seeded_gateway: GatewayServer) -> None:
    png = _encode(_picture(seed=3), "PNG")
    first, second = (_post(seeded_gateway, png, "mode=median").json() for _ in range(2))
    assert first == second  # IQA_MEDIAN_SEED makes the noise reproducible
    robust = first["robust"]
    assert (robust["n"], robust["sigma"], robust["radius"], robust["alpha"]) == (48, 0.1, 0.05, 0.05)
    assert robust["lower"] <= first["score"] <= robust["upper"]
    assert robust["lower"] < robust["upper"]  # 48 noisy copies of a real model do not all tie
    assert _post(seeded_gateway, png, "mode=jpeg").json()["robust"]["quality"] == 60


def test_median_response_equals_the_in_process_certificate(
    seeded_gateway: GatewayServer, scorer: Scorer
) -> None:
    png = _encode(_picture(seed=5), "PNG")
    served = _post(seeded_gateway, png, "mode=median").json()
    mode = MedianSmoothing(n=48, sigma=0.1, radius=0.05, alpha=0.05, seed=7)
    local = scorer.score(png, mode)
    assert local.mode == "median" and local.radius == 0.05 and local.bounds is not None
    assert served["score"] == pytest.approx(local.score, abs=1e-4)
    assert served["robust"]["lower"] == pytest.approx(local.bounds[0], abs=1e-4)
    assert served["robust"]["upper"] == pytest.approx(local.bounds[1], abs=1e-4)


def test_jpeg_mode_changes_the_score_of_a_jpeg_little(tiny_gateway: GatewayServer) -> None:
    """A q=75 JPEG at the canonical size (no resize) re-encoded at q=75 barely moves; the same
    picture with strong pixel noise is moved much more by the purification."""
    quality = Settings().jpeg_quality
    jpeg = _encode(_picture(seed=1), "JPEG", quality=quality)
    plain = _post(tiny_gateway, jpeg, "mode=plain").json()["score"]
    purified = _post(tiny_gateway, jpeg, "mode=jpeg").json()["score"]
    noisy = _picture(seed=1).astype(np.int16) + np.random.default_rng(9).integers(-60, 61, (96, 128, 3))
    noisy_png = _encode(np.clip(noisy, 0, 255).astype(np.uint8), "PNG")
    moved = abs(_post(tiny_gateway, noisy_png, "mode=jpeg").json()["score"]
                - _post(tiny_gateway, noisy_png, "mode=plain").json()["score"])
    assert abs(purified - plain) < 0.5
    assert abs(purified - plain) < moved


@pytest.mark.parametrize("query", ["mode=mean", "mode=", "mode=MEDIAN"])
def test_invalid_mode_is_422_json(tiny_gateway: GatewayServer, query: str) -> None:
    response = _post(tiny_gateway, _encode(_picture(), "PNG"), query)
    assert response.status_code == 422, response.text
    body = response.json()
    assert body["error"]["code"] == "validation_error" and "mode" in body["error"]["message"]
    assert "Traceback" not in response.text


def test_noise_is_shared_by_overlapping_crops() -> None:
    """A canonical image one crop large: its 5 crops are the same pixels, so every noisy copy must
    hold 5 identical crops (one noisy image, not 5 independent ones), with noise of std σ."""
    cfg = TINY_PREPROCESS
    canonical = np.full((cfg.crop_size, cfg.crop_size, 3), 128, dtype=np.uint8)
    mode = MedianSmoothing(n=6, sigma=0.05, copies_per_batch=4, seed=0)
    batches = mode.noisy_crops(canonical, cfg, np.random.default_rng(0))
    assert [b.shape[0] for b in batches] == [4 * cfg.num_eval_crops, 2 * cfg.num_eval_crops]
    copies = np.concatenate(batches).reshape(6, cfg.num_eval_crops, cfg.crop_size, cfg.crop_size, 3)
    assert np.array_equal(copies, np.broadcast_to(copies[:, :1], copies.shape))
    assert not np.array_equal(copies[0], copies[1])
    noise = copies.astype(np.float64) - 128
    assert noise[:, 0].std() == pytest.approx(0.05 * 255, rel=0.05)


def test_noise_is_independent_on_disjoint_crops() -> None:
    cfg = TINY_PREPROCESS  # 96 x 128 canonical, 64 px crops: the corner crops overlap the center
    canonical = np.full((96, 128, 3), 100, dtype=np.uint8)
    mode = MedianSmoothing(n=1, sigma=0.1, seed=0)
    crops = mode.noisy_crops(canonical, cfg, np.random.default_rng(1))[0].astype(int)
    # crop 0 (0, 0) and crop 1 (0, 64) share no pixel: their noise is uncorrelated
    assert abs(np.corrcoef(crops[0].ravel(), crops[1].ravel())[0, 1]) < 0.05
    # crop 0 and the center crop (16, 32) share rows 16..63 x cols 32..63 of the image
    assert np.array_equal(crops[0][16:64, 32:64], crops[4][0:48, 0:32])


def test_robust_mode_factory() -> None:
    settings = Settings(median_n=5, median_sigma=0.2, jpeg_quality=90)
    assert robust_mode("plain", settings) is None
    assert robust_mode("median", settings) == MedianSmoothing(
        n=5, sigma=0.2, radius=settings.median_radius, alpha=settings.median_alpha,
        copies_per_batch=settings.median_copies_per_batch, seed=None)
    assert robust_mode("jpeg", settings) == JpegPurification(quality=90)
    with pytest.raises(ValueError):
        robust_mode("blur", settings)
