"""The acceptance gate: config validation, threshold rows, pass / fail exit codes, an attack that does
nothing, missing surrogate, train.py's entry point, verify_gate for the export step, the UAP's fitting
images, and the shipped thresholds passing an NT-like fixture model and failing a λ = 0-like one."""

from __future__ import annotations

import copy
import json
import math
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from tests.gate_fixtures import (
    CALM,
    FIXTURE_PREPROCESS,
    TINY_GATE,
    ci_manifest,
    exposure_manifest,
    fixture_models,
    tiny_checkpoint,
    write_gate_config,
)
from training import evaluate
from training.data.dataset import ManifestDataset
from training.gate.config import DEFAULT_GATE_CONFIG, load_gate_config
from training.gate.data import EvalData, load_eval_data, load_split
from training.gate.evaluation import add_derived_metrics, evaluate_model
from training.gate.run import gate_checkpoint, run_gate
from training.gate.verdict import check_report, format_row, verify_gate
from training.utils import load_checkpoint, model_from_checkpoint

FGSM_ONLY = {"fgsm": copy.deepcopy(TINY_GATE["attacks"]["fgsm"])}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def ckpt_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A calm tiny checkpoint: it passes the shipped FGSM row (tests.gate_fixtures.TINY_GATE)."""
    return tiny_checkpoint(tmp_path_factory.mktemp("gate") / "model.pt", spread=CALM)


@pytest.fixture(scope="module")
def fgsm_gate(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Clean metrics and FGSM only (the shipped FGSM thresholds; no clean floors for random weights),
    no grad norms or sweep: a gate the calm checkpoint passes, fast."""
    return write_gate_config(
        tmp_path_factory.mktemp("cfg") / "gate.yaml",
        attacks=FGSM_ONLY,
        num_images=4,
        grad_norm={"enabled": False},
        sweep={"enabled": False},
    )


@pytest.fixture(scope="module")
def data(ckpt_path: Path):
    model = model_from_checkpoint(ckpt_path)
    return load_eval_data(ManifestDataset(ci_manifest(), "test", model.preprocess_cfg, train=False), 4)


def _run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    code = evaluate.cli(list(argv))
    return code, capsys.readouterr().out


# ----------------------------------------------------------------------------------------- config


def test_shipped_gate_config_is_valid_and_has_the_required_attacks() -> None:
    cfg = load_gate_config(DEFAULT_GATE_CONFIG)
    assert cfg["num_images"] == 200
    attacks = cfg["attacks"]
    pgd = [e for e in attacks.values() if e["attack"] == "pgd"]
    eps = sorted(round(e["params"]["eps"] * 255, 3) for e in pgd)
    assert eps == [2.0, 4.0, 8.0] and all(e["params"]["steps"] >= 10 for e in pgd)
    pgd_2 = next(e for e in pgd if round(e["params"]["eps"] * 255) == 2)
    assert pgd_2["required"] and pgd_2.get("max_images") is None  # PGD-10 at 2/255 on every image
    assert attacks["fgsm"]["params"] == {"eps": 0.005, "alpha": 0.01, "objective": "mid"}
    assert attacks["uap"]["params"]["scale"] == 0.04
    assert attacks["uap"]["fit_split"] in ("train", "val") and attacks["uap"]["fit_split"] != cfg["split"]
    assert attacks["square"]["params"]["eps"] == pytest.approx(4 / 255)
    assert attacks["perceptual"]["params"]["ssim_threshold"] == 0.9
    assert len(attacks["perceptual"]["params"]["lambdas"]) >= 2
    for name, entry in attacks.items():
        assert entry["thresholds"]["min_strength"] > 0, name  # an attack that does nothing fails


def test_overrides_and_validation(tmp_path: Path) -> None:
    cfg = load_gate_config(DEFAULT_GATE_CONFIG, ["num_images=7", "attacks.fgsm.thresholds.r_min=2.5"])
    assert cfg["num_images"] == 7 and cfg["attacks"]["fgsm"]["thresholds"]["r_min"] == 2.5
    with pytest.raises(ValueError, match="unknown threshold"):
        load_gate_config(DEFAULT_GATE_CONFIG, {"attacks.fgsm.thresholds.rmse_max": 1})
    with pytest.raises(ValueError, match="unknown key"):
        load_gate_config(DEFAULT_GATE_CONFIG, {"num_imgs": 1})
    with pytest.raises(ValueError, match="not a registered attack"):
        load_gate_config(DEFAULT_GATE_CONFIG, {"attacks.fgsm.attack": "fgsm2"})


# ---------------------------------------------------------------------------------------- verdict


def _report(**attack: Any) -> dict[str, Any]:
    metrics = {
        "clean_vs_adv": {"rmse": 5.0, "srocc": 0.9},
        "mos_vs_adv": {"rmse": 9.0, "srocc": 0.8},
        "r": 1.2,
        "mean_abs_delta": 3.0,
    }
    return {
        "clean": {"served": {"srocc": 0.9, "plcc": 0.9, "krocc": 0.7, "rmse": 8.0}},
        "attacks": {"fgsm": {"status": "ok", "metrics": metrics, **attack}},
        "grad_norm": {"status": "ok", "median_exact": 100.0},
    }


def _cfg(**thresholds: Any) -> dict[str, Any]:
    return {
        "clean": {"srocc_min": 0.8, "plcc_min": 0.8},
        "attacks": {"fgsm": {"attack": "fgsm", "required": True, "thresholds": thresholds}},
    }


def test_check_report_rows() -> None:
    verdict = check_report(_report(), _cfg(rmse_clean_vs_adv_max=6.0, r_min=1.0, min_strength=0.01))
    assert verdict["passed"] and len(verdict["rows"]) == 5
    verdict = check_report(_report(), _cfg(rmse_clean_vs_adv_max=4.0, r_min=None))
    assert not verdict["passed"]
    [row] = verdict["failures"]
    assert row == {
        "section": "fgsm",
        "metric": "clean_vs_adv.rmse",
        "value": 5.0,
        "op": "<=",
        "threshold": 4.0,
        "passed": False,
    }
    report = _report()
    report["attacks"]["fgsm"]["metrics"]["clean_vs_adv"]["srocc"] = math.nan
    assert not check_report(report, _cfg(srocc_clean_vs_adv_min=0.0))["passed"]  # NaN never passes
    cfg = _cfg()
    cfg["grad_norm"] = {"median_max": 50.0}
    assert check_report(_report(), cfg)["failures"][0]["section"] == "grad_norm"


def test_a_squeezed_score_range_fails_the_spread_floor_and_relative_rmse_is_judged() -> None:
    report = _report()
    report["clean"]["served"]["score_std"] = 2.8
    cfg = _cfg(rel_rmse_clean_vs_adv_max=1.0)
    cfg["clean"]["score_std_min"] = 5.0
    report["attacks"]["fgsm"]["metrics"]["rel_rmse"] = 1.2
    failures = {(r["section"], r["metric"]) for r in check_report(report, cfg)["failures"]}
    assert failures == {("clean", "score_std"), ("fgsm", "rel_rmse")}
    report["clean"]["served"]["score_std"] = 8.2
    report["attacks"]["fgsm"]["metrics"]["rel_rmse"] = 0.9
    assert check_report(report, cfg)["passed"]


def test_reports_measured_before_the_derived_metrics_get_them_from_their_per_image_scores() -> None:
    report = _report(per_image={"clean": [40.0, 44.0], "adv": [42.0, 44.0], "mos": [30.0, 60.0]})
    report["clean"]["scores"] = [40.0, 44.0]
    add_derived_metrics(report)
    assert report["clean"]["served"]["score_std"] == pytest.approx(2.0)
    assert report["attacks"]["fgsm"]["metrics"]["rel_rmse"] == pytest.approx(math.sqrt(2.0) / 2.0)
    assert report["attacks"]["fgsm"]["metrics"]["r_floor_hits"] == 1  # the second image did not move
    assert report["plcc_logistic"] == {"fitted": False, "failed": 0, "where": []}
    report["attacks"]["fgsm"]["metrics"]["rel_rmse"] = 0.5  # present: kept as measured
    assert add_derived_metrics(report)["attacks"]["fgsm"]["metrics"]["rel_rmse"] == 0.5


def test_not_run_fails_only_when_required_and_errors_always_fail() -> None:
    not_run = {"status": "not run", "reason": "no surrogate checkpoint"}
    report = _report()
    report["attacks"]["fgsm"] = not_run
    failures = check_report(report, _cfg())["failures"]
    assert failures[0]["metric"] == "status" and "no surrogate" in failures[0]["value"]
    optional = _cfg()
    optional["attacks"]["fgsm"]["required"] = False
    assert check_report(report, optional)["passed"]
    report["attacks"]["fgsm"] = {"status": "error", "reason": "RuntimeError: boom"}
    assert not check_report(report, optional)["passed"]


def test_an_attack_that_does_nothing_fails_min_strength(ckpt_path: Path, data) -> None:
    """FGSM with ε far below one 8-bit level: the delivered image equals the original, Δscore = 0."""
    cfg = load_gate_config(DEFAULT_GATE_CONFIG)
    cfg.update(num_images=4, grad_norm={"enabled": False}, sweep={"enabled": False}, clean={})
    cfg["attacks"] = {
        "noop": {
            "attack": "fgsm",
            "required": True,
            "params": {"eps": 1e-6, "alpha": 1e-6},
            "thresholds": {"rmse_clean_vs_adv_max": 100.0, "r_min": 0.0, "min_strength": 0.01},
        }
    }
    model = model_from_checkpoint(ckpt_path).train()  # e.g. straight out of train.py
    report = evaluate_model(model, data, cfg)
    assert model.training  # evaluated in eval mode, its mode put back
    reference = evaluate_model(model.eval(), data, cfg)
    assert report["clean"]["scores"] == reference["clean"]["scores"]
    entry = report["attacks"]["noop"]
    assert entry["status"] == "ok" and entry["metrics"]["mean_abs_delta"] == 0.0
    assert entry["quality"]["linf_max"] == 0.0
    verdict = check_report(report, cfg)
    assert [(r["section"], r["metric"]) for r in verdict["failures"]] == [("noop", "mean_abs_delta")]


# ------------------------------------------------------------------------------------ CLI and API


def test_gate_pass_exits_0(ckpt_path: Path, fgsm_gate: Path, tmp_path: Path, capsys) -> None:
    code, out = _run_cli(
        capsys,
        "--checkpoint",
        str(ckpt_path),
        "--gate-config",
        str(fgsm_gate),
        "--report",
        str(tmp_path / "report"),
        "--gate",
    )
    assert code == 0, out
    assert "gate: PASSED" in out and "FAIL" not in out
    ok, reason = verify_gate(load_checkpoint(ckpt_path))
    assert ok and reason.startswith("passed")
    # It passed on the shipped FGSM thresholds, by values recomputed from the per-image scores.
    report = json.loads((tmp_path / "report" / "report.json").read_text())
    rows = {r["metric"]: r for r in report["gate"]["rows"] if r["section"] == "fgsm"}
    shipped = load_gate_config()["attacks"]["fgsm"]["thresholds"]
    per_image = report["attacks"]["fgsm"]["per_image"]
    clean, adv = np.asarray(per_image["clean"]), np.asarray(per_image["adv"])
    recomputed = {
        "clean_vs_adv.rmse": float(np.sqrt(np.mean((adv - clean) ** 2))),
        "r": float(np.mean(np.log10(np.maximum(100 - clean, clean) / np.maximum(np.abs(adv - clean), 1e-4)))),
        "mean_abs_delta": float(np.mean(np.abs(adv - clean))),
    }
    for metric, key in (("clean_vs_adv.rmse", "rmse_clean_vs_adv_max"), ("r", "r_min"),
                        ("mean_abs_delta", "min_strength")):
        assert rows[metric]["threshold"] == shipped[key] and rows[metric]["passed"]
        assert rows[metric]["value"] == pytest.approx(recomputed[metric], rel=1e-6)
    assert recomputed["clean_vs_adv.rmse"] <= shipped["rmse_clean_vs_adv_max"]
    assert recomputed["r"] >= shipped["r_min"] and recomputed["mean_abs_delta"] >= shipped["min_strength"] > 0


def test_gate_fail_exits_nonzero_and_prints_failing_rows(
    ckpt_path: Path, fgsm_gate: Path, tmp_path: Path, capsys
) -> None:
    code, out = _run_cli(
        capsys,
        "--checkpoint",
        str(ckpt_path),
        "--gate-config",
        str(fgsm_gate),
        "--report",
        str(tmp_path / "report"),
        "--gate",
        "attacks.fgsm.thresholds.rmse_clean_vs_adv_max=0.0",
        "clean.srocc_min=1.1",
    )
    assert code == 1
    assert "gate: FAILED" in out
    assert "FAIL fgsm clean_vs_adv.rmse = " in out and "(must be <= 0)" in out
    assert "FAIL clean srocc = " in out and "(must be >= 1.1)" in out
    gate = load_checkpoint(ckpt_path)["gate"]
    assert gate["passed"] is False and len(gate["failures"]) == 2
    ok, reason = verify_gate(load_checkpoint(ckpt_path))
    assert not ok and "fgsm clean_vs_adv.rmse" in reason and "clean srocc" in reason
    assert "Acceptance gate: FAILED" in (tmp_path / "report" / "report.md").read_text()


def test_evaluate_without_gate_flag_never_fails_or_touches_the_checkpoint(
    ckpt_path: Path, fgsm_gate: Path, tmp_path: Path, capsys
) -> None:
    before = ckpt_path.stat().st_mtime_ns
    code, out = _run_cli(
        capsys,
        "--checkpoint",
        str(ckpt_path),
        "--gate-config",
        str(fgsm_gate),
        "--report",
        str(tmp_path / "report"),
        "clean.srocc_min=1.1",
    )
    assert code == 0 and "gate: FAILED" in out
    assert ckpt_path.stat().st_mtime_ns == before


def test_missing_surrogate_marks_transfer_attacks_not_run(
    ckpt_path: Path, tmp_path: Path, capsys, caplog
) -> None:
    attacks = {**FGSM_ONLY, "uap": copy.deepcopy(TINY_GATE["attacks"]["uap"])}
    cfg = write_gate_config(
        tmp_path / "gate.yaml",
        attacks=attacks,
        num_images=3,
        grad_norm={"enabled": False},
        sweep={"enabled": False},
        surrogate_checkpoint=str(tmp_path / "no-such-surrogate.pt"),
    )
    code, out = _run_cli(
        capsys,
        "--checkpoint",
        str(ckpt_path),
        "--gate-config",
        str(cfg),
        "--report",
        str(tmp_path / "r1"),
        "--gate",
    )
    assert code == 1 and "not run: no surrogate checkpoint" in out
    assert "FAIL uap status = not run" in out
    assert any("NO SURROGATE" in r.getMessage() for r in caplog.records)
    code, out = _run_cli(
        capsys,
        "--checkpoint",
        str(ckpt_path),
        "--gate-config",
        str(cfg),
        "--report",
        str(tmp_path / "r2"),
        "--gate",
        "attacks.uap.required=false",
    )
    assert code == 0, out


def test_gate_checkpoint_entry_point_of_train(ckpt_path: Path, fgsm_gate: Path, tmp_path: Path) -> None:
    ckpt = load_checkpoint(ckpt_path)
    model = model_from_checkpoint(ckpt)
    gate = gate_checkpoint(model, ckpt, None, tmp_path / "report", fgsm_gate)
    assert gate["passed"] is True
    assert set(gate) >= {"passed", "failures", "report_sha256", "report_dir", "config_sha256", "time"}
    assert (tmp_path / "report" / "report.json").is_file()


def test_verify_gate_ungated_failed_passed() -> None:
    for ckpt in ({}, {"gate": None}):
        ok, reason = verify_gate(ckpt)
        assert not ok and reason.startswith("ungated")
    failed = {
        "gate": {
            "passed": False,
            "failures": [
                {
                    "section": "pgd_2",
                    "metric": "clean_vs_adv.rmse",
                    "value": 17.25,
                    "op": "<=",
                    "threshold": 15.0,
                    "passed": False,
                }
            ],
        }
    }
    ok, reason = verify_gate(failed)
    assert not ok and reason == "failed: pgd_2 clean_vs_adv.rmse = 17.25 (must be <= 15)"
    ok, reason = verify_gate({"gate": {"passed": "yes"}})
    assert not ok and reason.startswith("failed")
    ok, _ = verify_gate({"gate": {"passed": True, "report_sha256": "ab" * 32}})
    assert ok


def test_verify_gate_refuses_a_verdict_given_to_other_weights(ckpt_path: Path, fgsm_gate: Path) -> None:
    """A passed verdict belongs to the weights it was measured on: weights trained further (or swapped
    in) after the gate make it stale, and a verdict without a weights hash cannot vouch for any."""
    from training.gate.identity import weights_sha256

    ckpt = load_checkpoint(ckpt_path)
    model = model_from_checkpoint(ckpt)
    ckpt["gate"] = gate_checkpoint(model, ckpt, None, ckpt_path.parent / "stale-report", fgsm_gate)
    ok, reason = verify_gate(ckpt, weights_sha256(model_from_checkpoint(ckpt)))
    assert ok, reason
    with torch.no_grad():
        next(model.parameters()).add_(1e-3)  # "trained further"
    ckpt["model"] = model.state_dict()
    ok, reason = verify_gate(ckpt, weights_sha256(model))
    assert not ok and reason.startswith("stale") and "evaluate.py --gate" in reason
    ok, reason = verify_gate({"gate": {"passed": True}}, weights_sha256(model))
    assert not ok and "no weights hash" in reason


def test_new_thresholds_rejudge_the_same_measurements_without_rerunning(
    ckpt_path: Path, fgsm_gate: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Thresholds do not change what the attacks measure: a second gate run with other thresholds
    re-judges the existing report; other attack settings measure again."""
    import training.gate.run as gate_module

    ckpt = load_checkpoint(ckpt_path)
    model = model_from_checkpoint(ckpt)
    first = gate_checkpoint(model, ckpt, None, tmp_path / "report", fgsm_gate)
    assert first["passed"] is True

    def must_not_run(*args: Any, **kwargs: Any) -> dict[str, Any]:
        raise AssertionError("the attacks were run again")

    monkeypatch.setattr(gate_module, "evaluate_model", must_not_run)
    # evaluate.py (default --attacks all) re-judges the report train.py's gate wrote
    report = str(tmp_path / "report")
    code = evaluate.cli(["--checkpoint", str(ckpt_path), "--gate-config", str(fgsm_gate), "--report", report])
    assert code == 0
    strict = gate_checkpoint(
        model,
        ckpt,
        None,
        tmp_path / "report",
        fgsm_gate,
        overrides={"attacks.fgsm.thresholds.min_strength": 1e6},
    )
    assert strict["passed"] is False
    assert [r["metric"] for r in strict["failures"]] == ["mean_abs_delta"]
    assert strict["report_sha256"] != first["report_sha256"]
    with pytest.raises(AssertionError, match="run again"):
        gate_checkpoint(
            model, ckpt, None, tmp_path / "report", fgsm_gate, overrides={"attacks.fgsm.params.eps": 0.01}
        )


def test_shipped_model_has_its_gate_report_committed_and_passes_the_current_thresholds() -> None:
    """The provenance chain of the committed default model: metadata.json records a passed verdict
    whose report.json is committed under docs/reports/ (same sha256, same weights), and that report's
    measurements still pass the thresholds of training/configs/gate.yaml as they are now."""
    import hashlib
    import json

    from tests.gate_fixtures import REPO_ROOT
    from training.gate.report import load_report

    versions = sorted(
        (p for p in (REPO_ROOT / "model_repository" / "iqa").iterdir() if p.name.isdigit()),
        key=lambda p: int(p.name),
    )
    gate = json.loads((versions[-1] / "metadata.json").read_text())["gate"]
    assert gate["passed"] is True
    reports = {
        hashlib.sha256(path.read_bytes()).hexdigest(): path
        for path in (REPO_ROOT / "docs" / "reports").glob("*/report.json")
    }
    assert gate["report_sha256"] in reports, "the shipped model's gate report is not under docs/reports/"
    report = load_report(reports[gate["report_sha256"]])
    assert report["meta"]["weights_sha256"] == gate["weights_sha256"]
    verdict = check_report(report, load_gate_config())
    assert verdict["passed"], [format_row(r) for r in verdict["failures"]]


# ------------------------------------------------------------- the UAP's fitting images (issue 10)


@pytest.fixture(scope="module")
def exposure_data():
    """16 test images of the exposure fixture dataset; their source also loads its train / val splits."""
    return load_split(exposure_manifest(), "test", FIXTURE_PREPROCESS, 16, 0)


@pytest.fixture(scope="module")
def fixtures(exposure_data) -> dict[str, torch.nn.Module]:
    return fixture_models(exposure_data)


def _uap_only(**entry: Any) -> dict[str, Any]:
    cfg = load_gate_config(DEFAULT_GATE_CONFIG, {"num_images": 16})
    uap = {**cfg["attacks"]["uap"], "fit_images": 6, **entry}
    uap["params"] = {**uap["params"], "epochs": 1}
    cfg.update(attacks={"uap": uap}, grad_norm={"enabled": False}, sweep={"enabled": False})
    return cfg


def test_uap_is_fitted_on_images_it_is_not_evaluated_on(
    exposure_data, fixtures: dict[str, torch.nn.Module], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The transfer attack must not see the evaluated images while fitting: the images the UAP is
    fitted on (as handed to UAP.fit) are none of the evaluated ones, by content and by path."""
    from training.gate.attacks import UAP

    fitted_on: list[torch.Tensor] = []
    fit = UAP.fit

    def spy(self: UAP, surrogate: Any = None, images: Any = None) -> UAP:
        fitted_on.extend(img for batch in images for img in batch)
        return fit(self, surrogate, images)

    monkeypatch.setattr(UAP, "fit", spy)
    report = evaluate_model(fixtures["nt"], exposure_data, _uap_only(), surrogate=fixtures["surrogate"],
                            cache_dir=tmp_path)
    entry = report["attacks"]["uap"]
    assert entry["status"] == "ok" and entry["uap_fitted"], entry.get("reason")
    assert len(fitted_on) == 6  # one epoch over the 6 fitting images
    evaluated = exposure_data.images
    assert not any(torch.equal(a, b) for a in fitted_on for b in evaluated)
    assert entry["fit"]["split"] == "val" and len(entry["fit"]["paths"]) == 6
    assert not set(entry["fit"]["paths"]) & set(report["meta"]["paths"])
    assert all(Path(p).name[:3] in {"s08", "s09", "s10", "s11"} for p in entry["fit"]["paths"])  # val


def test_uap_cache_key_follows_the_fitting_images(
    exposure_data, fixtures: dict[str, torch.nn.Module], tmp_path: Path
) -> None:
    """A fitted UAP is reused only for the same fitting images: another split or count refits."""

    def run(**entry: Any) -> dict[str, Any]:
        cfg = _uap_only(**entry)
        return evaluate_model(fixtures["nt"], exposure_data, cfg, surrogate=fixtures["surrogate"],
                              cache_dir=tmp_path)["attacks"]["uap"]

    val6, train6, val5, again = run(), run(fit_split="train"), run(fit_images=5), run()
    assert val6["uap_fitted"] and train6["uap_fitted"] and val5["uap_fitted"]
    assert len({val6["uap_cache"], train6["uap_cache"], val5["uap_cache"]}) == 3
    assert not again["uap_fitted"] and again["uap_cache"] == val6["uap_cache"]


def test_fit_split_must_not_be_the_evaluated_split() -> None:
    with pytest.raises(ValueError, match="fitted on the evaluated split"):
        load_gate_config(DEFAULT_GATE_CONFIG, {"attacks.uap.fit_split": "test"})
    with pytest.raises(ValueError, match="fitted on the evaluated split"):
        load_gate_config(DEFAULT_GATE_CONFIG, {"split": "val"})  # the UAP fits on val by default
    assert load_gate_config(DEFAULT_GATE_CONFIG, {"split": "val", "attacks.uap.fit_split": "train"})
    with pytest.raises(ValueError, match="fit_split must be one of"):
        load_gate_config(DEFAULT_GATE_CONFIG, {"attacks.uap.fit_split": "holdout"})


def test_a_fitted_attack_without_a_manifest_to_fit_on_is_an_error(
    exposure_data, fixtures: dict[str, torch.nn.Module]
) -> None:
    """Hand-made images carry no manifest: the UAP errors (a failing row) rather than fit on them."""
    bare = EvalData(exposure_data.images, exposure_data.mos, exposure_data.paths)
    report = evaluate_model(fixtures["nt"], bare, _uap_only(), surrogate=fixtures["surrogate"])
    assert report["attacks"]["uap"]["status"] == "error"
    assert "no images to fit the attack on" in report["attacks"]["uap"]["reason"]


# ------------------------------------------- the shipped thresholds on NT-like / λ = 0-like fixtures


def _recomputed_rows(model: torch.nn.Module, data, report: dict[str, Any], cfg: dict[str, Any]) -> dict:
    """(section, metric) -> passed, from scores recomputed here: the served clean scores by running
    the model on ``eval_crops`` of each image, every attack metric from the per-image scores."""
    from scipy import stats

    from training.preprocessing import eval_crops

    served = []
    for img in data.images:
        uint8 = (img.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
        crops = torch.from_numpy(eval_crops(uint8, model.preprocess_cfg)).permute(0, 3, 1, 2).float() / 255
        with torch.no_grad():
            served.append(float(model.score(crops).mean()))
    served_a, mos = np.asarray(served), np.asarray(data.mos)
    np.testing.assert_allclose(report["clean"]["scores"], served_a, atol=1e-3)
    values = {
        ("clean", "srocc"): stats.spearmanr(served_a, mos)[0],
        ("clean", "plcc"): stats.pearsonr(served_a, mos)[0],
        ("clean", "score_std"): float(np.std(served_a)),
    }
    for name, entry in report["attacks"].items():
        c, a = np.asarray(entry["per_image"]["clean"]), np.asarray(entry["per_image"]["adv"])
        m = np.asarray(entry["per_image"]["mos"])
        rmse = float(np.sqrt(np.mean((a - c) ** 2)))
        values.update({
            (name, "clean_vs_adv.rmse"): rmse,
            (name, "clean_vs_adv.srocc"): stats.spearmanr(c, a)[0],
            (name, "mos_vs_adv.rmse"): float(np.sqrt(np.mean((a - m) ** 2))),
            (name, "mos_vs_adv.srocc"): stats.spearmanr(a, m)[0],
            (name, "r"): float(np.mean(np.log10(np.maximum(100 - c, c) / np.maximum(np.abs(a - c), 1e-4)))),
            (name, "mean_abs_delta"): float(np.mean(np.abs(a - c))),
            (name, "rel_rmse"): rmse / float(np.std(c)),
        })
    passed = {}
    for row in report["gate"]["rows"]:
        key = (row["section"], row["metric"])
        assert key in values, f"no recomputation for the gate row {key}"
        assert row["value"] == pytest.approx(values[key], rel=1e-5, abs=1e-6), key
        ok = values[key] <= row["threshold"] if row["op"] == "<=" else values[key] >= row["threshold"]
        passed[key] = bool(ok)
    return passed


def test_the_shipped_gate_passes_an_nt_fixture_and_fails_a_lam0_fixture(
    exposure_data, fixtures: dict[str, torch.nn.Module], tmp_path: Path
) -> None:
    """training/configs/gate.yaml as shipped (every threshold, attack and budget; only the image
    count is cut to 16) passes the NT-like fixture model and fails the λ = 0-like one, whose clean
    scores are the same but whose input gradient is ~8× larger. Both verdicts are checked against
    values recomputed here from the model's scores, row by row."""
    cfg = load_gate_config(DEFAULT_GATE_CONFIG, {"num_images": len(exposure_data)})
    verdicts, rows, medians = {}, {}, {}
    for name in ("nt", "lam0"):
        verdicts[name] = run_gate(fixtures[name], exposure_data, cfg, tmp_path / name,
                                  surrogate=fixtures["surrogate"])
        report = json.loads((tmp_path / name / "report.json").read_text())
        assert all(e["status"] == "ok" for e in report["attacks"].values())
        rows[name] = _recomputed_rows(fixtures[name], exposure_data, report, cfg)
        medians[name] = report["grad_norm"]["median_exact"]
        assert verdicts[name]["passed"] == all(rows[name].values())
        assert {(r["section"], r["metric"]) for r in verdicts[name]["failures"]} == {
            key for key, ok in rows[name].items() if not ok
        }
    assert verdicts["nt"]["passed"], verdicts["nt"]["reason"]
    assert not verdicts["lam0"]["passed"]
    assert medians["lam0"] > 4 * medians["nt"]  # the fixtures are what they claim: ‖∇ₓf‖₁
    failed = {key for key, ok in rows["lam0"].items() if not ok}
    assert {("fgsm", "clean_vs_adv.rmse"), ("fgsm", "r"), ("pgd_4", "clean_vs_adv.rmse")} <= failed
    assert not {key for key in failed if key[0] == "clean"}  # same clean scores: only robustness fails


# -------------------------------------------------------- what the report says about its own metrics


def test_report_counts_images_on_r_s_floor_and_failed_logistic_fits(
    exposure_data, fixtures: dict[str, torch.nn.Module], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """report.json and report.md say how many images sat on R's zero-change floor per attack and
    where the PLCC logistic fit failed (raw Pearson used), instead of folding both in silently."""
    import training.metrics as metrics_module
    from training.gate.report import write_report

    def no_fit(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("Optimal parameters not found: the maximum number of evaluations is exceeded")

    monkeypatch.setattr(metrics_module, "fit_logistic_4param", no_fit)
    cfg = load_gate_config(DEFAULT_GATE_CONFIG, {"num_images": 8, "fit_logistic": True})
    noop = {"attack": "fgsm", "params": {"eps": 1e-6, "alpha": 1e-6}, "thresholds": {"r_min": 1.0}}
    cfg.update(attacks={"noop": noop, "fgsm": cfg["attacks"]["fgsm"]},
               grad_norm={"enabled": False}, sweep={"enabled": False})
    report = evaluate_model(fixtures["nt"], exposure_data.head(8), cfg)
    assert report["attacks"]["noop"]["metrics"]["r_floor_hits"] == 8  # nothing moved
    per_image = report["attacks"]["fgsm"]["per_image"]
    moved = np.abs(np.subtract(per_image["adv"], per_image["clean"]))
    assert report["attacks"]["fgsm"]["metrics"]["r_floor_hits"] == int(np.sum(moved < 1e-4))
    assert report["clean"]["served"]["plcc_logistic_failed"] is True
    where = report["plcc_logistic"]["where"]
    assert report["plcc_logistic"]["fitted"] and report["plcc_logistic"]["failed"] == len(where) == 2 + 2 * 3
    assert {"clean.served", "clean.attack_scorer", "noop.mos_vs_adv", "fgsm.clean_vs_adv"} <= set(where)
    report["gate"] = check_report(report, cfg)
    write_report(report, tmp_path)
    md = (tmp_path / "report.md").read_text()
    assert "images on R's floor" in md and re.search(r"\| noop \| [56]\.\d{3} \| 8 \| 8 \|", md)
    assert "the fit failed for 8 PLCC value(s), which are raw Pearson" in md and "`noop.mos_vs_adv`" in md
    assert json.loads((tmp_path / "report.json").read_text())["plcc_logistic"]["failed"] == 8


# --- mutation testing (make mutation, docs/MUTATION.md) -------------------------------------------


def test_verify_gate_stale_reasons_name_both_weights() -> None:
    """The stale reason names the judged weights and these weights by their first 12 hex digits, or
    says that the verdict recorded no weights hash."""
    passed = {"gate": {"passed": True, "weights_sha256": "a" * 64, "report_sha256": "c" * 64}}
    assert verify_gate(passed, "a" * 64) == (True, f"passed (report sha256 {'c' * 12})")
    ok, reason = verify_gate(passed, "b" * 64)
    assert not ok
    assert reason == (
        f"stale: the gate verdict was given to other weights (weights {'a' * 12}; these are "
        f"{'b' * 12}); re-run training/evaluate.py --gate on this checkpoint"
    )
    ok, reason = verify_gate({"gate": {"passed": True}}, "b" * 64)
    assert not ok
    assert reason.startswith("stale: the gate verdict was given to other weights (a verdict with no weights")
    assert f"no weights hash; these are {'b' * 12})" in reason


def test_verify_gate_reasons_without_failing_rows() -> None:
    """A failed verdict without rows gives its recorded reason, or says that none was recorded; a
    passed one without a report hash still passes (no weights hash asked for)."""
    assert verify_gate({"gate": {"passed": False, "reason": "boom"}}) == (False, "failed: boom")
    assert verify_gate({"gate": {"passed": False}}) == (False, "failed: no failing rows recorded")
    assert verify_gate({"gate": {"passed": True}}) == (True, "passed (report sha256 )")


def test_a_value_on_its_threshold_passes_and_a_missing_or_boolean_one_fails() -> None:
    """Thresholds are inclusive (rmse 5.0 ≤ 5.0 and srocc 0.9 ≥ 0.9 pass); a metric absent from the
    report (None) or a boolean where a number belongs cannot pass."""
    verdict = check_report(_report(), _cfg(rmse_clean_vs_adv_max=5.0, srocc_clean_vs_adv_min=0.9))
    assert verdict["passed"], verdict["failures"]
    assert not check_report(_report(), _cfg(rmse_clean_vs_adv_max=4.999))["passed"]
    assert not check_report(_report(), _cfg(srocc_clean_vs_adv_min=0.901))["passed"]
    report = _report()
    del report["attacks"]["fgsm"]["metrics"]["r"]
    [row] = check_report(report, _cfg(r_min=0.5))["failures"]
    assert (row["metric"], row["value"], row["passed"]) == ("r", None, False)
    report["attacks"]["fgsm"]["metrics"]["r"] = True
    [row] = check_report(report, _cfg(r_min=0.5))["failures"]
    assert (row["metric"], row["value"], row["passed"]) == ("r", True, False)


def test_a_report_without_attacks_fails_every_required_attack_as_missing() -> None:
    report = _report()
    del report["attacks"]
    verdict = check_report(report, _cfg())
    assert [format_row(r) for r in verdict["failures"]] == ["fgsm status = not run (missing) (must be == ok)"]
    cfg = _cfg()
    del cfg["attacks"]["fgsm"]["required"]  # required unless the config says otherwise
    assert [r["section"] for r in check_report(report, cfg)["failures"]] == ["fgsm"]


def test_format_row_and_failure_reason_text() -> None:
    """Floats with 4 significant digits, other values as they are; failures joined by '; '."""
    from training.gate.verdict import failure_reason

    rows = [
        {"section": "pgd_2", "metric": "clean_vs_adv.rmse", "value": 17.2512, "op": "<=", "threshold": 15.0},
        {"section": "uap", "metric": "status", "value": "error (boom)", "op": "==", "threshold": "ok"},
    ]
    assert format_row(rows[0]) == "pgd_2 clean_vs_adv.rmse = 17.25 (must be <= 15)"
    assert format_row(rows[1]) == "uap status = error (boom) (must be == ok)"
    assert failure_reason([]) == "passed"
    assert failure_reason(rows) == (
        "failed: pgd_2 clean_vs_adv.rmse = 17.25 (must be <= 15); uap status = error (boom) (must be == ok)"
    )


def test_grad_norm_rows_add_to_the_others_and_a_status_without_reason_shows_empty() -> None:
    cfg = _cfg(rmse_clean_vs_adv_max=4.0)
    cfg["grad_norm"] = {"median_max": 150.0}
    verdict = check_report(_report(), cfg)
    assert [(r["section"], r["metric"]) for r in verdict["rows"]] == [
        ("clean", "srocc"), ("clean", "plcc"), ("fgsm", "clean_vs_adv.rmse"), ("grad_norm", "median_exact")
    ]
    assert [r["section"] for r in verdict["failures"]] == ["fgsm"]
    report = _report()
    report["attacks"]["fgsm"] = {"status": "error"}
    [row] = check_report(report, _cfg())["failures"]
    assert row["value"] == "error ()"
