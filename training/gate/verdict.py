"""The verdict of the acceptance gate: thresholds over an evaluation report, and its check at export.

* ``ATTACK_THRESHOLDS`` / ``CLEAN_THRESHOLDS`` / ``GRAD_NORM_THRESHOLDS``: threshold name -> (the
  dotted path of the value in the section's result, the comparison the value must pass).
* ``check_report(report, cfg)``: one row per threshold (section, metric, value, op, threshold,
  passed); a required attack that did not run, or any attack that raised, is a failing row.
* ``format_row(row)`` / ``failurefailure_reason(failures)``: the rows as text for logs and the verdict.
* ``verify_gate(ckpt, weights_sha) -> (ok, reason)``: for the export step; ok only for a passed
  verdict given to those weights.

Running the gate (evaluate, judge, write, record the verdict) is ``training.gate.run``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from training.config import get_dotted

__all__ = [
    "ATTACK_THRESHOLDS",
    "CLEAN_THRESHOLDS",
    "GRAD_NORM_THRESHOLDS",
    "check_report",
    "failure_reason",
    "format_row",
    "verify_gate",
]

# threshold name -> (path of the value inside the section's result, comparison the value must pass)
ATTACK_THRESHOLDS: dict[str, tuple[str, str]] = {
    "rmse_clean_vs_adv_max": ("metrics.clean_vs_adv.rmse", "<="),
    "srocc_clean_vs_adv_min": ("metrics.clean_vs_adv.srocc", ">="),
    "rmse_mos_vs_adv_max": ("metrics.mos_vs_adv.rmse", "<="),
    "srocc_mos_vs_adv_min": ("metrics.mos_vs_adv.srocc", ">="),
    "r_min": ("metrics.r", ">="),
    "min_strength": ("metrics.mean_abs_delta", ">="),
    "rel_rmse_clean_vs_adv_max": ("metrics.rel_rmse", "<="),
}
CLEAN_THRESHOLDS: dict[str, tuple[str, str]] = {
    "srocc_min": ("served.srocc", ">="),
    "plcc_min": ("served.plcc", ">="),
    "krocc_min": ("served.krocc", ">="),
    "rmse_max": ("served.rmse", "<="),
    "score_std_min": ("served.score_std", ">="),
}
GRAD_NORM_THRESHOLDS: dict[str, tuple[str, str]] = {"median_max": ("median_exact", "<=")}


def _row(section: str, metric: str, value: Any, op: str, threshold: Any) -> dict[str, Any]:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        number = float(value)
        ok = math.isfinite(number) and (number <= threshold if op == "<=" else number >= threshold)
    else:
        ok = False  # missing or NaN metric: the gate cannot vouch for it
    return {
        "section": section,
        "metric": metric,
        "value": value,
        "op": op,
        "threshold": threshold,
        "passed": bool(ok),
    }


def _threshold_rows(
    section: str, result: Any, thresholds: Mapping[str, Any], table: Mapping[str, tuple[str, str]]
) -> list[dict[str, Any]]:
    rows = []
    for key, (path, op) in table.items():
        threshold = thresholds.get(key)
        if threshold is None:
            continue
        metric = path.removeprefix("metrics.").removeprefix("served.")
        rows.append(_row(section, metric, get_dotted(result, path), op, float(threshold)))
    return rows


def check_report(report: Mapping[str, Any], cfg: Mapping[str, Any]) -> dict[str, Any]:
    """Judge an evaluation report against the thresholds of ``cfg``: ``{"passed", "rows", "failures"}``."""
    rows = _threshold_rows("clean", report.get("clean"), cfg.get("clean") or {}, CLEAN_THRESHOLDS)
    for name, entry in cfg["attacks"].items():
        result = report.get("attacks", {}).get(name) or {"status": "not run", "reason": "missing"}
        status = result.get("status")
        if status == "ok":
            rows += _threshold_rows(name, result, entry.get("thresholds") or {}, ATTACK_THRESHOLDS)
        elif status == "error" or entry.get("required", True):
            value = f"{status} ({result.get('reason', '')})"
            rows.append(
                {
                    "section": name,
                    "metric": "status",
                    "value": value,
                    "op": "==",
                    "threshold": "ok",
                    "passed": False,
                }
            )
    defenses = report.get("defenses") or {"status": "not run", "reason": "missing"}
    if (cfg.get("defenses") or {}).get("required", False) and defenses.get("status") != "ok":
        rows.append({"section": "defenses", "metric": "status", "passed": False, "op": "==",
                     "threshold": "ok", "value": f"{defenses.get('status')} ({defenses.get('reason', '')})"})
    gn = cfg.get("grad_norm") or {}
    if any(gn.get(k) is not None for k in GRAD_NORM_THRESHOLDS):
        rows += _threshold_rows("grad_norm", report.get("grad_norm"), gn, GRAD_NORM_THRESHOLDS)
    failures = [r for r in rows if not r["passed"]]
    return {"passed": not failures, "rows": rows, "failures": failures}


def format_row(row: Mapping[str, Any]) -> str:
    """'pgd_2 clean_vs_adv.rmse = 17.2 (must be <= 15)'."""
    value = row["value"]
    shown = f"{value:.4g}" if isinstance(value, float) else str(value)
    threshold = row["threshold"]
    limit = f"{threshold:.4g}" if isinstance(threshold, float) else str(threshold)
    return f"{row['section']} {row['metric']} = {shown} (must be {row['op']} {limit})"


def failure_reason(failures: list[Mapping[str, Any]]) -> str:
    if not failures:
        return "passed"
    return "failed: " + "; ".join(format_row(r) for r in failures)


def verify_gate(ckpt: Mapping[str, Any], weights_sha: str | None = None) -> tuple[bool, str]:
    """Export-time check: (True, ...) only if ``ckpt["gate"]`` is a verdict with ``passed`` True.
    The reason says "ungated" for a checkpoint without a verdict, or lists the failing rows.

    ``weights_sha`` (``weights_sha256`` of the model about to be exported) also ties the verdict to
    those weights: a verdict recorded for other weights (a checkpoint trained further, or weights
    swapped in after the gate) or one that records no weights hash is "stale" and does not pass."""
    gate = ckpt.get("gate")
    if not isinstance(gate, Mapping):
        return False, "ungated: the checkpoint has no acceptance-gate verdict (training/evaluate.py --gate)"
    if gate.get("passed") is True:
        judged = gate.get("weights_sha256")
        if weights_sha is not None and judged != weights_sha:
            judged = f"weights {str(judged)[:12]}" if judged else "a verdict with no weights hash"
            return False, (
                f"stale: the gate verdict was given to other weights ({judged}; these are "
                f"{weights_sha[:12]}); re-run training/evaluate.py --gate on this checkpoint"
            )
        return True, f"passed (report sha256 {str(gate.get('report_sha256', ''))[:12]})"
    failures = gate.get("failures") or []
    if failures:
        return False, failure_reason(list(failures))
    return False, f"failed: {gate.get('reason') or 'no failing rows recorded'}"
