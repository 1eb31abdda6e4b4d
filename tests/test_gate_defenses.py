"""The gate's defense rows (training/gate/defenses.py): the gateway's robust modes (plain, median
smoothing, JPEG purification) evaluated against adaptive FGSM / PGD on a fixture model."""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
import pytest
import torch

from tests.gate_fixtures import FIXTURE_PREPROCESS, TINY_GATE, exposure_manifest, fixture_models
from training.gate.config import load_gate_config, validate_config
from training.gate.data import load_split
from training.gate.defenses import JpegScorer, MedianSmoothedScorer
from training.gate.evaluation import evaluate_model
from training.gate.identity import measurement_sha256
from training.gate.report import render_markdown
from training.gate.scoring import CropScorer
from training.gate.verdict import check_report

pytestmark = pytest.mark.usefixtures("one_torch_thread")

DEFENSES = {
    "enabled": True,
    "required": False,
    "max_images": None,
    "attacks": ["fgsm", "pgd_2"],
    "modes": {
        "plain": {},
        "median": {"n": 16, "sigma": 0.05, "radius": 0.025, "alpha": 0.05, "attack_copies": 2, "seed": 0},
        "jpeg": {"quality": 75, "max_images": 6},
    },
}


def _config(**defenses: Any) -> dict[str, Any]:
    cfg = copy.deepcopy(TINY_GATE)
    cfg.update(num_images=10, attacks={k: cfg["attacks"][k] for k in ("fgsm", "pgd_2")},
               grad_norm={"enabled": False}, sweep={"enabled": False},
               defenses={**copy.deepcopy(DEFENSES), **defenses})
    return cfg


@pytest.fixture(scope="module")
def data():
    return load_split(exposure_manifest(), "test", FIXTURE_PREPROCESS, 10, 0)


@pytest.fixture(scope="module")
def report(data) -> dict[str, Any]:
    return evaluate_model(fixture_models(data)["nt"], data, _config())


def test_every_defense_meets_every_listed_attack(report: dict[str, Any]) -> None:
    section = report["defenses"]
    assert section["status"] == "ok" and section["required"] is False
    assert [(r["defense"], r["attack"]) for r in section["rows"]] == [
        (d, a) for d in ("plain", "median", "jpeg") for a in ("fgsm", "pgd_2")]
    for row in section["rows"]:
        n = 6 if row["defense"] == "jpeg" else 10  # the jpeg entry's own max_images
        assert row["n_images"] == n and len(row["adv_scores"]) == n
        assert -1 <= row["clean_srocc"] <= 1 and -1 <= row["adv_srocc"] <= 1
        assert row["rmse_clean_vs_adv"] >= row["mean_abs_delta"] > 0  # RMSE >= mean |Δ|; attacks act
        std = np.std(section["defenses"][row["defense"]]["clean_scores"])
        assert row["rel_rmse"] == pytest.approx(row["rmse_clean_vs_adv"] / std)
    assert section["defenses"]["jpeg"]["gradient"].startswith("BPDA")


def test_plain_defense_is_the_gates_own_attack_row(report: dict[str, Any]) -> None:
    """Same scorer, same images, same deterministic FGSM: the plain row repeats the attack row."""
    plain = {r["attack"]: r for r in report["defenses"]["rows"] if r["defense"] == "plain"}
    assert plain["fgsm"]["clean_srocc"] == pytest.approx(report["clean"]["attack_scorer"]["srocc"])
    assert plain["fgsm"]["rmse_clean_vs_adv"] == pytest.approx(
        report["attacks"]["fgsm"]["metrics"]["clean_vs_adv"]["rmse"], rel=1e-5)
    assert np.allclose(plain["fgsm"]["adv_scores"], report["attacks"]["fgsm"]["per_image"]["adv"], atol=1e-4)


def test_median_certificate_and_jpeg_scores(report: dict[str, Any]) -> None:
    median = report["defenses"]["defenses"]["median"]
    cert = median["certificate"]
    assert (cert["n"], cert["sigma"], cert["radius"], cert["alpha"]) == (16, 0.05, 0.025, 0.05)
    assert cert["abstained"] == 0
    assert cert["mean_lower"] <= float(np.mean(median["clean_scores"])) <= cert["mean_upper"]
    assert 0 < cert["mean_cert_rd"] < 1
    plain = np.asarray(report["defenses"]["defenses"]["plain"]["clean_scores"])[:6]  # jpeg: 6 images
    jpeg = np.asarray(report["defenses"]["defenses"]["jpeg"]["clean_scores"])
    assert not np.allclose(plain, jpeg) and np.abs(plain - jpeg).mean() < 10  # purified, not destroyed


def test_report_markdown_has_the_defense_table(report: dict[str, Any]) -> None:
    text = render_markdown(report)
    assert "## Defenses: the gateway's robust modes (informational)" in text
    assert text.count("| median | ") == 2 and "certified ℓ2 radius 0.025" in text


def test_defense_rows_are_informational_unless_required() -> None:
    cfg = _config()
    broken = {"defenses": {"status": "error", "reason": "boom"}, "attacks": {}, "clean": {}}
    assert not [r for r in check_report(broken, {**cfg, "attacks": {}})["rows"] if r["section"] == "defenses"]
    cfg["defenses"]["required"] = True
    rows = [r for r in check_report(broken, {**cfg, "attacks": {}})["rows"] if r["section"] == "defenses"]
    assert len(rows) == 1 and not rows[0]["passed"] and "boom" in rows[0]["value"]


def test_config_validation_and_measurement_hash() -> None:
    validate_config(_config())
    with pytest.raises(ValueError, match=r"defenses\.modes\.median"):
        validate_config(_config(modes={"median": {"copies": 3}}))
    with pytest.raises(ValueError, match="white-box"):
        validate_config(_config(attacks=["uap"]))
    shipped = load_gate_config()
    assert shipped["defenses"]["enabled"] is False and shipped["defenses"]["required"] is False
    without = copy.deepcopy(shipped)
    without.pop("defenses")
    assert measurement_sha256(shipped) == measurement_sha256(without)  # stored reports stay reusable
    assert measurement_sha256(load_gate_config(overrides=["defenses.enabled=true"])) != measurement_sha256(
        without)


def test_defended_scorers_match_the_served_modes(data) -> None:
    """The gate's JPEG defense scores the same purified pixels as serving's; the median defense's
    EOT forward has a gradient and its noisy copies are 8-bit images."""
    from training.jpeg_purification import jpeg_round_trip

    scorer = CropScorer(fixture_models(data)["nt"], num_eval_crops=1)
    x = torch.stack([data.images[i] for i in range(2)])
    jpeg = JpegScorer(scorer, quality=75)
    pixels = (x[0] * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    purified = torch.from_numpy(np.array(jpeg_round_trip(pixels, 75))).permute(2, 0, 1).float()[None] / 255
    assert float(jpeg.score(x[:1])[0]) == pytest.approx(float(scorer.score(purified)[0]), abs=1e-5)
    median = MedianSmoothedScorer(scorer, n=8, sigma=0.05, attack_copies=2, seed=1)
    xg = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(median(xg).sum(), xg)
    assert float(grad.abs().sum()) > 0
    certs = median.certify(x)
    assert all(c.lower <= c.median <= c.upper for c in certs) and all(c.n == 8 for c in certs)



def test_rel_rmse_is_derived_for_older_reports(report: dict[str, Any]) -> None:
    from training.gate.evaluation import add_derived_metrics

    old = copy.deepcopy(report)
    for row in old["defenses"]["rows"]:
        del row["rel_rmse"]
    add_derived_metrics(old)
    assert [r["rel_rmse"] for r in old["defenses"]["rows"]] == pytest.approx(
        [r["rel_rmse"] for r in report["defenses"]["rows"]])
