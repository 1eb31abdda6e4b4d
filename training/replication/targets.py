"""What the replication concludes from its reports: the project's targets and the derived rows.

``target_rows(base, nt)``: the four targets (FGSM and PGD before/after RMSE reduction, median
‖∇ₓf‖₁ reduction, clean-SROCC loss) with both values, the change and whether each was met.
``scale_rows``: the clean score spread and the scale-free RMSE. ``ablation_rows`` /
``ablation_series``: one row / point per ablation run. ``find_section`` picks an attack section of a
report by attack type and ε.
"""

from __future__ import annotations

import math
from typing import Any

from training.gate.tables import fmt

__all__ = [
    "PAPER",
    "TARGETS",
    "ablation_rows",
    "ablation_series",
    "find_section",
    "reduction",
    "scale_rows",
    "served",
    "target_rows",
]

# The paper's headline (HyperIQA, Tables 1-2) and the project's targets.
PAPER = {"fgsm_before": 19.174, "fgsm_after": 7.885, "srocc_base": 0.899, "srocc_nt": 0.859}
TARGETS = {
    "fgsm_rmse_reduction": 60.0,  # % of the FGSM before/after RMSE
    "grad_norm_reduction": 60.0,  # % of the median exact ‖∇ₓf‖₁
    "srocc_loss": 0.02,  # clean SROCC, baseline − NT
    "pgd_rmse_reduction": 40.0,  # % of the PGD-10 (2/255) before/after RMSE
}


def find_section(
    report: dict[str, Any], attack: str, eps: float | None = None
) -> tuple[str, dict[str, Any]] | None:
    """The first evaluated section of ``attack`` type (with ε ≈ ``eps``), preferring ≥ 10 steps."""
    hits = []
    for name, e in report.get("attacks", {}).items():
        if e.get("attack") != attack or e.get("status") != "ok":
            continue
        if eps is not None and abs(float((e.get("params") or {}).get("eps", -1)) - eps) > 1e-4:
            continue
        hits.append((name, e))
    hits.sort(key=lambda item: -int((item[1].get("params") or {}).get("steps", 10) >= 10))
    return hits[0] if hits else None


def reduction(base: float | None, nt: float | None) -> float | None:
    """100·(base − nt)/base in %, None when either value is missing, zero or not finite."""
    if base is None or nt is None or not base or not math.isfinite(base) or not math.isfinite(nt):
        return None
    return 100.0 * (base - nt) / base


def target_rows(base: dict[str, Any], nt: dict[str, Any]) -> list[dict[str, Any]]:
    """The project's four targets: value for baseline and NT, the change, the target, met or not."""
    rows = []
    fgsm_b, fgsm_n = find_section(base, "fgsm"), find_section(nt, "fgsm")
    b = fgsm_b[1]["metrics"]["clean_vs_adv"]["rmse"] if fgsm_b else None
    n = fgsm_n[1]["metrics"]["clean_vs_adv"]["rmse"] if fgsm_n else None
    red = reduction(b, n)
    rows.append(
        {
            "name": "FGSM before/after RMSE reduction",
            "base": b,
            "nt": n,
            "change": red,
            "unit": "%",
            "target": f"≥ {TARGETS['fgsm_rmse_reduction']:g}%",
            "met": red is not None and red >= TARGETS["fgsm_rmse_reduction"],
        }
    )
    b = base.get("grad_norm", {}).get("median_exact")
    n = nt.get("grad_norm", {}).get("median_exact")
    red = reduction(b, n)
    rows.append(
        {
            "name": "median ‖∇ₓf‖₁ reduction",
            "base": b,
            "nt": n,
            "change": red,
            "unit": "%",
            "target": f"≥ {TARGETS['grad_norm_reduction']:g}%",
            "met": red is not None and red >= TARGETS["grad_norm_reduction"],
        }
    )
    b = base.get("clean", {}).get("served", {}).get("srocc")
    n = nt.get("clean", {}).get("served", {}).get("srocc")
    loss = (b - n) if b is not None and n is not None else None
    rows.append(
        {
            "name": "clean SROCC loss (baseline − NT)",
            "base": b,
            "nt": n,
            "change": loss,
            "unit": "",
            "target": f"≤ {TARGETS['srocc_loss']:g}",
            "met": loss is not None and loss <= TARGETS["srocc_loss"],
        }
    )
    pgd_b, pgd_n = find_section(base, "pgd", 2 / 255), find_section(nt, "pgd", 2 / 255)
    b = pgd_b[1]["metrics"]["clean_vs_adv"]["rmse"] if pgd_b else None
    n = pgd_n[1]["metrics"]["clean_vs_adv"]["rmse"] if pgd_n else None
    steps = (pgd_b[1].get("params") or {}).get("steps", 10) if pgd_b else None
    red = reduction(b, n)
    rows.append(
        {
            "name": f"PGD-{steps if steps else 10} at 2/255 before/after RMSE reduction",
            "base": b,
            "nt": n,
            "change": red,
            "unit": "%",
            "target": f"≥ {TARGETS['pgd_rmse_reduction']:g}%",
            "met": red is not None and red >= TARGETS["pgd_rmse_reduction"] and (steps or 0) >= 10,
        }
    )
    return rows


def scale_rows(base: dict[str, Any], nt: dict[str, Any]) -> list[list[str]]:
    """The spread of the clean scores and the scale-free before/after RMSE (÷ that spread): NT can cut
    the raw-point RMSE by squeezing every score into a narrow band, which these rows expose."""
    spread = [fmt(served(r, "score_std"), 2) for r in (base, nt)]
    rows = [["clean score spread (std)", *spread]]
    for attack, eps, label in (("fgsm", None, "FGSM"), ("pgd", 2 / 255, "PGD at 2/255")):
        b, n = find_section(base, attack, eps), find_section(nt, attack, eps)
        rows.append([
            f"{label}: RMSE before/after ÷ score std",
            fmt(b[1]["metrics"].get("rel_rmse") if b else None),
            fmt(n[1]["metrics"].get("rel_rmse") if n else None),
        ])
    return rows


def served(report: dict[str, Any], key: str) -> Any:
    """A clean metric of the served score (``clean.served.<key>``)."""
    return report.get("clean", {}).get("served", {}).get(key)


def ablation_rows(reports: dict[float, dict[str, Any]]) -> list[list[str]]:
    """One table row per ablation value: clean SROCC / RMSE, FGSM SROCC / RMSE, spread, RMSE ÷ std."""
    rows = []
    for value, r in sorted(reports.items()):
        clean = r.get("clean", {}).get("served", {})
        f = find_section(r, "fgsm")
        m = f[1]["metrics"]["clean_vs_adv"] if f else {}
        rows.append(
            [
                f"{value:g}",
                fmt(clean.get("srocc")),
                fmt(clean.get("rmse")),
                fmt(m.get("srocc")),
                fmt(m.get("rmse")),
                fmt(clean.get("score_std"), 2),
                fmt(f[1]["metrics"].get("rel_rmse") if f else None),
            ]
        )
    return rows


def ablation_series(reports: dict[float, dict[str, Any]]) -> tuple[list[float | None], list[float | None]]:
    """Clean SROCC and FGSM before/after RMSE per ablation value, in ascending order (Fig. 7)."""
    srocc, rmse = [], []
    for _, r in sorted(reports.items()):
        srocc.append(r.get("clean", {}).get("served", {}).get("srocc"))
        f = find_section(r, "fgsm")
        rmse.append(f[1]["metrics"]["clean_vs_adv"]["rmse"] if f else None)
    return srocc, rmse
