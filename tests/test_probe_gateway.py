"""The FGSM self-probe in the gateway (serving/probe.py): real uvicorn servers on a tiny repository that
holds a scorer and its ``iqa_probe`` (tests/probe_fixtures.py)."""

from __future__ import annotations

import base64
import io
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import torch
from PIL import Image

from serving.probe import Prober, linearity, probe_model_path
from tests.conftest import GatewayServer
from tests.probe_fixtures import PROBE_PREPROCESS, random_crops, tiny_effnet, write_probe_repository
from training.gate.attacks import create_attack
from training.gate.attacks.fgsm import fgsm_probe
from training.preprocessing import decode_image, eval_crops, resize_canonical

THREADS = {"IQA_ORT_INTRA_OP_THREADS": "1"}


@pytest.fixture(scope="module")
def probe_repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_probe_repository(tmp_path_factory.mktemp("probe_repository"), threshold=1e9)


@pytest.fixture(scope="module")
def photos() -> list[bytes]:
    """Two PNGs of 80x96 px (larger than the 64 px crops) with different textures."""
    out = []
    for seed in (1, 2):
        pixels = random_crops(1, seed=seed, size=96)[0, :80]
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, format="PNG")
        out.append(buffer.getvalue())
    return out


def _crops(data: bytes) -> np.ndarray:
    return eval_crops(resize_canonical(decode_image(data), PROBE_PREPROCESS), PROBE_PREPROCESS)


def _post(server: GatewayServer, data: bytes, **params: str) -> dict[str, Any]:
    response = httpx.post(f"{server.url}/score", params=params, content=data,
                          headers={"Content-Type": "image/png"}, timeout=60)
    assert response.status_code == 200, response.text
    return response.json()


def test_probe_returns_the_gates_fgsm_score(
    probe_repository: Path, photos: list[bytes], gateway_factory: Callable[..., Any]
) -> None:
    """?probe=true: adv_score is the mean served score of the gate's FGSM images of the eval crops
    (torch, 1e-3), delta = adv_score − score, ε = 0.005; the calibrated threshold recorded by the export
    (1e9 here) is the default, so nothing is flagged; no probe without the flag; "probe" is timed."""
    model = tiny_effnet()
    with gateway_factory(probe_repository, env=THREADS) as server:
        for data in photos:
            body = _post(server, data, probe="true", timings="true")
            probe = body["probe"]
            x = torch.from_numpy(_crops(data)).float().div(255).permute(0, 3, 1, 2)
            with torch.no_grad():
                expected = float(model.score(create_attack("fgsm")(model, x)).mean())
            assert probe["adv_score"] == pytest.approx(expected, abs=1e-3)
            assert probe["delta"] == pytest.approx(probe["adv_score"] - body["score"], abs=1e-9)
            assert abs(probe["delta"]) > 1e-3  # the step moves this model's score
            assert probe["epsilon"] == 0.005 and probe["flagged"] is False and probe["flagged_by"] == []
            clean, adv, _, grad_l1 = fgsm_probe(model.eval(), x)
            ratios = (adv - clean).abs() / (grad_l1 / 255)  # ε = 0.005: one 8-bit level per pixel
            assert probe["linearity"] == pytest.approx(float(ratios.max()), rel=1e-3)
            assert "perturbation_png" not in probe
            assert body["timings"]["probe"] > 0
            plain = _post(server, data, timings="true")
            assert "probe" not in plain and "probe" not in plain["timings"]
            # shared forward: the probe graph's clean pass scored the probed request (no "infer" stage),
            # the scorer graph the plain one; they agree to float32 rounding
            assert "infer" not in body["timings"] and "infer" in plain["timings"]
            assert plain["score"] == pytest.approx(body["score"], abs=1e-4)


def test_without_a_shared_forward_the_probed_score_is_the_scorers(
    probe_repository: Path, photos: list[bytes], gateway_factory: Callable[..., Any]
) -> None:
    """IQA_PROBE_SHARE_FORWARD=false: a probed request runs the scorer too, so its score is exactly the
    plain request's, and the probe's result is the same as with the shared forward."""
    env = {**THREADS, "IQA_PROBE_SHARE_FORWARD": "false"}
    with gateway_factory(probe_repository, env=env) as server:
        body = _post(server, photos[0], probe="true", timings="true")
        plain = _post(server, photos[0])
    assert {"infer", "probe"} <= set(body["timings"])
    assert body["score"] == plain["score"]
    prober = Prober(probe_model_path(probe_repository, "iqa", 1), score_range=(0.0, 100.0))
    prober.load()
    assert body["probe"]["adv_score"] == pytest.approx(prober.run(_crops(photos[0])).adv_score, abs=1e-6)


def test_flag_follows_the_threshold_and_rate_one_probes_every_request(
    probe_repository: Path, photos: list[bytes], gateway_factory: Callable[..., Any]
) -> None:
    """IQA_PROBE_THRESHOLD between the two photos' |delta|: the larger one is flagged, the other not;
    IQA_PROBE_RATE=1 probes requests that did not ask for it."""
    path = probe_model_path(probe_repository, "iqa", 1)
    prober = Prober(path, score_range=(0.0, 100.0))
    prober.load()
    deltas = [abs(prober.run(_crops(data)).delta) for data in photos]
    assert abs(deltas[0] - deltas[1]) > 1e-3
    threshold = (deltas[0] + deltas[1]) / 2
    env = {**THREADS, "IQA_PROBE_RATE": "1", "IQA_PROBE_THRESHOLD": repr(threshold)}
    with gateway_factory(probe_repository, env=env) as server:
        probes = [_post(server, data)["probe"] for data in photos]
    assert [p["flagged"] for p in probes] == [d > threshold for d in deltas]
    assert sorted(p["flagged"] for p in probes) == [False, True]
    for p, d in zip(probes, deltas, strict=True):
        assert abs(p["delta"]) == pytest.approx(d, abs=1e-4)


def test_linearity_flags_on_its_own_threshold_and_the_calibrated_one_is_the_default(
    tmp_path: Path, photos: list[bytes], gateway_factory: Callable[..., Any]
) -> None:
    """A linearity threshold between the two photos' linearity flags the larger one, by "linearity"
    alone (|delta|'s threshold is 1e9); from IQA_PROBE_LINEARITY_THRESHOLD and, unset, from the
    threshold the probe's metadata records."""
    path = probe_model_path(write_probe_repository(tmp_path / "probe", threshold=1e9), "iqa", 1)
    prober = Prober(path, score_range=(0.0, 100.0))
    prober.load()
    values = [prober.run(_crops(data)).linearity for data in photos]
    assert all(v is not None for v in values) and abs(values[0] - values[1]) > 1e-3
    middle = (values[0] + values[1]) / 2
    expected = [["linearity"] if v > middle else [] for v in values]
    configured = write_probe_repository(tmp_path / "configured", threshold=1e9)
    recorded = write_probe_repository(tmp_path / "recorded", threshold=1e9, linearity_threshold=middle)
    env = {**THREADS, "IQA_PROBE_RATE": "1"}
    for repository, extra in ((configured, {"IQA_PROBE_LINEARITY_THRESHOLD": repr(middle)}), (recorded, {})):
        with gateway_factory(repository, env={**env, **extra}) as server:
            probes = [_post(server, data)["probe"] for data in photos]
        assert [p["flagged_by"] for p in probes] == expected
        assert [p["flagged"] for p in probes] == [bool(e) for e in expected]
        assert [p["linearity"] for p in probes] == pytest.approx(values, rel=1e-6)
    with gateway_factory(configured, env=env) as server:  # no threshold anywhere: reported, never flags
        assert [_post(server, data)["probe"]["flagged"] for data in photos] == [False, False]


def test_linearity_is_the_largest_crop_ratio_of_the_step_to_its_first_order_prediction() -> None:
    """|Δ| / (‖∇‖₁ · 1/255) per crop, max over crops; a crop with no gradient counts 0 when its score
    did not move and inf when it did; ε below one 8-bit level takes no step."""
    clean = np.array([50.0, 60.0, 70.0])
    adv = np.array([52.0, 57.0, 70.0])
    grad = np.array([255.0, 255.0 * 6, 0.0])  # first-order predictions 1 and 6 points
    assert linearity(clean, adv, grad, 0.005) == pytest.approx(2.0)
    assert linearity(clean, adv, grad, 2.5 / 255) == pytest.approx(1.0)  # two levels: predictions 2, 12
    assert linearity(clean[2:], adv[2:], grad[2:], 0.005) == 0.0
    assert linearity(clean[:1], adv[:1], np.zeros(1), 0.005) == float("inf")
    assert linearity(clean[:1], adv[:1], grad[:1], 0.5 / 255) == float("inf")


def test_perturbation_png_is_the_amplified_first_crop(
    probe_repository: Path, photos: list[bytes], gateway_factory: Callable[..., Any]
) -> None:
    """&perturbation=true: a base64 PNG of the crop size; 128 where the FGSM left a pixel alone and
    128 ± 100 for the ±1/255 steps (−ε..+ε -> 0..255), as the gate's FGSM moved the first crop."""
    model = tiny_effnet()
    with gateway_factory(probe_repository, env=THREADS) as server:
        body = _post(server, photos[0], probe="true", perturbation="true")
    png = base64.b64decode(body["probe"]["perturbation_png"])
    image = Image.open(io.BytesIO(png))
    assert image.format == "PNG" and image.size == (64, 64) and image.mode == "RGB"
    pixels = np.asarray(image).astype(int)
    x = torch.from_numpy(_crops(photos[0])[:1]).float().div(255).permute(0, 3, 1, 2)
    step = torch.round((create_attack("fgsm")(model, x) - x) * 255)[0].permute(1, 2, 0).numpy()
    np.testing.assert_array_equal(pixels, 128 + 100 * step.astype(int))
    assert {28, 228} <= set(np.unique(pixels).tolist()) <= {28, 128, 228}


def test_probe_without_a_probe_model_is_422(tiny_gateway: GatewayServer, photos: list[bytes]) -> None:
    response = httpx.post(f"{tiny_gateway.url}/score?probe=true", content=photos[0],
                          headers={"Content-Type": "image/png"}, timeout=60)
    assert response.status_code == 422
    assert response.json()["error"]["code"] == "probe_unavailable"
    assert "probe" not in _post(tiny_gateway, photos[0])
