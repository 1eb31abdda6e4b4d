"""The verdict's threshold rows (training/gate/verdict.py): pass / fail per row, the spread floor,
derived metrics, required / not-run / error rows, and the texts and edge cases pinned by mutation
testing (make mutation, docs/MUTATION.md)."""

from __future__ import annotations

import copy
import math
from typing import Any

import pytest

from tests.gate_fixtures import (
    TINY_GATE,
)
from training.gate.evaluation import add_derived_metrics
from training.gate.verdict import check_report, format_row, verify_gate

FGSM_ONLY = {"fgsm": copy.deepcopy(TINY_GATE["attacks"]["fgsm"])}


pytestmark = pytest.mark.usefixtures("one_torch_thread")



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


def test_required_defenses_fail_when_missing_or_not_ok_and_pass_when_ok() -> None:
    cfg = {**_cfg(), "defenses": {"required": True}}
    report = _report()
    verdict = check_report(report, cfg)
    assert verdict["failures"] == [{"section": "defenses", "metric": "status", "passed": False, "op": "==",
                                    "threshold": "ok", "value": "not run (missing)"}]
    assert verdict["rows"][-1] == verdict["failures"][0] and not verdict["passed"]
    report["defenses"] = {"status": "ok"}
    assert check_report(report, cfg)["passed"]
    report["defenses"] = {"status": "error", "reason": "boom"}
    assert check_report(report, cfg)["failures"][0]["value"] == "error (boom)"
    assert check_report(report, {**cfg, "defenses": {"required": False}})["passed"]


def test_a_required_defenses_section_without_reason_shows_an_empty_one() -> None:
    report = {**_report(), "defenses": {"status": "error"}}
    [row] = check_report(report, {**_cfg(), "defenses": {"required": True}})["failures"]
    assert row["value"] == "error ()"
