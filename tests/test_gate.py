"""The acceptance gate end to end: config validation, pass / fail exit codes, an attack that does
nothing, missing surrogate, train.py's entry point, verify_gate for the export step, re-judging
without re-running, and the shipped model's committed report. Threshold rows: test_gate_verdict.py;
the UAP's fitting images and the shipped thresholds on fixture models: test_gate_methodology.py."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from tests.gate_fixtures import (
    CALM,
    TINY_GATE,
    ci_manifest,
    tiny_checkpoint,
    write_gate_config,
)
from training import evaluate
from training.data.dataset import ManifestDataset
from training.gate.config import DEFAULT_GATE_CONFIG, load_gate_config
from training.gate.data import load_eval_data
from training.gate.evaluation import evaluate_model
from training.gate.run import gate_checkpoint
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
