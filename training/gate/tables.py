"""Markdown tables of evaluation reports, laid out like the NT paper's Tables 1-3 and S8-S10.

Every table function takes ``reports: dict[label, report]``: one report gives plain values, two give
"baseline / NT" cells as in the paper. The same functions build the per-model report.md
(``training.gate.report``) and the replication's docs/RESULTS.md (``training.replication``), which
also shares ``markdown_table`` and ``fmt``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from training.config import get_dotted

__all__ = [
    "ATTACK_TABLES",
    "Reports",
    "attack_names",
    "attack_table",
    "clean_table",
    "defense_table",
    "details_table",
    "fd_check_table",
    "fmt",
    "gate_table",
    "grad_norm_table",
    "markdown_table",
    "r_table",
    "ranking_table",
    "sweep_table",
]

Reports = Mapping[str, Mapping[str, Any]]

# (title, metric key) of the per-attack tables; every one has the paper's two column groups.
ATTACK_TABLES = (
    ("Table 2. RMSE↓ under attack", "rmse"),
    ("Table 3. SROCC↑ under attack", "srocc"),
    ("Table S8. KROCC↑ under attack", "krocc"),
    ("Table S9. PLCC↑ under attack", "plcc"),
)


def fmt(value: Any, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    if isinstance(value, (int, float)):
        return f"{value:.{digits}f}"
    return str(value)


def _cell(reports: Reports, path: str, digits: int = 3) -> str:
    return " / ".join(fmt(get_dotted(r, path), digits) for r in reports.values())


def _header(reports: Reports) -> str:
    return " / ".join(reports) if len(reports) > 1 else "value"


def markdown_table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    """A GitHub markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def attack_names(reports: Reports) -> list[str]:
    """Attack sections in config order, across all reports."""
    names: list[str] = []
    for r in reports.values():
        names.extend(n for n in r.get("attacks", {}) if n not in names)
    return names


def _attack_cell(reports: Reports, name: str, path: str, digits: int = 3) -> str:
    cells = []
    for r in reports.values():
        entry = r.get("attacks", {}).get(name)
        if entry is None or entry.get("status") != "ok":
            cells.append(entry.get("status", "n/a") if entry else "n/a")
        else:
            cells.append(fmt(get_dotted(entry, path), digits))
    return " / ".join(cells)


def clean_table(reports: Reports) -> str:
    """Table 1: served score vs MOS on the unattacked images."""
    rows = [
        [f"{label}{arrow}", _cell(reports, f"clean.served.{key}")]
        for label, key, arrow in (("RMSE", "rmse", "↓"), ("SROCC", "srocc", "↑"), ("PLCC", "plcc", "↑"),
                                  ("KROCC", "krocc", "↑"))
    ]
    rows.append(["score spread (std)", _cell(reports, "clean.served.score_std", 2)])
    rows.append(["images", _cell(reports, "clean.served.n_images", 0)])
    rows.append(["crops per image", _cell(reports, "clean.served.num_crops", 0)])
    return markdown_table(["Metric", _header(reports)], rows)


def attack_table(reports: Reports, metric: str) -> str:
    """Tables 2, 3, S8, S9: ``metric`` between MOS and the after-attack score, and between the scores
    before and after the attack."""
    head = _header(reports)
    rows = [
        [name, _attack_cell(reports, name, "n_images", 0),
         _attack_cell(reports, name, f"metrics.mos_vs_adv.{metric}"),
         _attack_cell(reports, name, f"metrics.clean_vs_adv.{metric}")]
        for name in attack_names(reports)
    ]
    header = ["Attack", "images", f"MOS & after attack ({head})", f"before & after ({head})"]
    return markdown_table(header, rows)


def r_table(reports: Reports) -> str:
    """Table S10: R robustness (Eq. S12), how many images sit on R's zero-change floor (each adds up
    to 6 to the mean), the mean |Δscore|, and the before/after RMSE relative to the clean score spread
    (blind to a model that merely compresses its output range)."""
    rows = [
        [name, _attack_cell(reports, name, "metrics.r"),
         _attack_cell(reports, name, "metrics.r_floor_hits", 0),
         _attack_cell(reports, name, "n_images", 0),
         _attack_cell(reports, name, "metrics.mean_abs_delta"),
         _attack_cell(reports, name, "metrics.rel_rmse")]
        for name in attack_names(reports)
    ]
    head = _header(reports)
    return markdown_table(
        ["Attack", f"R↑ ({head})", f"images on R's floor, abs Δ < 1e-4 ({head})", f"images ({head})",
         f"mean abs Δscore↓ ({head})", f"RMSE before/after ÷ score std↓ ({head})"],
        rows,
    )


def ranking_table(reports: Reports) -> str | None:
    """Set-level attacks (``set_level``, e.g. the ranking attack): how far the order of the set moved,
    SROCC / KROCC between the scores before and after, the before/after RMSE and SROCC with MOS before
    and after; None when no report has a set-level attack."""
    names = [
        n for n in attack_names(reports)
        if any((r.get("attacks", {}).get(n) or {}).get("set_level") for r in reports.values())
    ]
    if not names:
        return None
    rows = [
        [name, _attack_cell(reports, name, "n_images", 0),
         _attack_cell(reports, name, "metrics.clean_vs_adv.srocc"),
         _attack_cell(reports, name, "metrics.clean_vs_adv.krocc"),
         _attack_cell(reports, name, "metrics.clean_vs_adv.rmse"),
         _attack_cell(reports, name, "metrics.mos_vs_clean.srocc"),
         _attack_cell(reports, name, "metrics.mos_vs_adv.srocc")]
        for name in names
    ]
    head = _header(reports)
    header = ["Attack", "images in the set", f"SROCC(before, after)↑ ({head})",
              f"KROCC(before, after)↑ ({head})", f"RMSE(before, after)↓ ({head})",
              f"SROCC(MOS, before) ({head})", f"SROCC(MOS, after)↑ ({head})"]
    return markdown_table(header, rows)


def details_table(report: Mapping[str, Any]) -> str:
    """Per attack: parameters, images, visibility of the adversarial examples and time."""
    rows = []
    for name, e in report.get("attacks", {}).items():
        if e.get("status") != "ok":
            rows.append([name, e.get("attack", ""), e.get("status", ""), e.get("reason", ""), "", "", "", ""])
            continue
        q = e["quality"]
        params = ", ".join(f"{k}={v}" for k, v in (e.get("params") or {}).items())
        rows.append([
            name, f"{e['attack']}({params})", "ok", str(e["n_images"]),
            f"{fmt(q['ssim_mean'], 4)} (min {fmt(q['ssim_min'], 4)})",
            f"{fmt(q['psnr_mean'], 1)} (min {fmt(q['psnr_min'], 1)})",
            fmt(255 * q["linf_max"], 2) if q.get("linf_max") is not None else "n/a",
            fmt(e.get("seconds"), 1),
        ])
    header = ["Attack", "type(params)", "status", "images / reason", "SSIM mean", "PSNR dB mean",
              "max ℓ∞ ×255", "seconds"]
    return markdown_table(header, rows)


def grad_norm_table(reports: Reports) -> str:
    """Gradient norms ‖∇ₓf‖₁ (exact) and the finite difference of Eq. 6, with their agreement."""
    rows = [
        [label, _cell(reports, f"grad_norm.{key}", digits)]
        for label, key, digits in (
            ("median exact ‖∇f‖₁", "median_exact", 2), ("median FD (Eq. 6)", "median_fd", 2),
            ("mean exact", "mean_exact", 2), ("Pearson(exact, FD)", "pearson", 3),
            ("Spearman(exact, FD)", "spearman", 3), ("h", "h", 4), ("images", "n_images", 0),
        )
    ]
    return markdown_table(["", _header(reports)], rows)


def fd_check_table(reports: Reports) -> str | None:
    """How well the finite difference of Eq. 6 tracks the exact ‖∇ₓf‖₁ at each checked step h (the
    ``grad_norm.check_h`` setting); None when no report checked any."""
    steps = sorted({row["h"] for r in reports.values() for row in get_dotted(r, "grad_norm.fd_check") or []})
    if not steps:
        return None

    def cell(h: float, key: str, digits: int) -> str:
        values = []
        for r in reports.values():
            rows = [row for row in get_dotted(r, "grad_norm.fd_check") or [] if row["h"] == h]
            values.append(fmt(rows[0].get(key) if rows else None, digits))
        return " / ".join(values)

    rows = [
        [f"{h:g}", cell(h, "median_fd", 2), cell(h, "median_fd_over_exact", 3), cell(h, "pearson", 3),
         cell(h, "spearman", 3)]
        for h in steps
    ]
    header = ["h", "median FD", "median FD ÷ median exact", "Pearson(exact, FD)", "Spearman(exact, FD)"]
    return markdown_table(header, rows)


def sweep_table(report: Mapping[str, Any]) -> str:
    """Fig. 6 data: I-FGSM for every (ε, iterations): intensity (SSIM) vs before/after RMSE, SROCC."""
    rows = [
        [fmt(255 * r["eps"], 1), str(r["iters"]), fmt(r["mean_ssim"], 4), fmt(r["rmse"]), fmt(r["srocc"]),
         fmt(r["mean_abs_delta"])]
        for r in report.get("sweep", {}).get("rows", [])
    ]
    return markdown_table(["ε ×255", "iterations", "mean SSIM", "RMSE before/after", "SROCC before/after",
                   "mean abs Δ"], rows)


def defense_table(report: Mapping[str, Any]) -> str | None:
    """The gateway's robust modes as defenses (training.gate.defenses): clean and attacked metrics of
    the defended score per defense x attack, plus median smoothing's certificate; None when not run."""
    section = report.get("defenses") or {}
    if section.get("status") != "ok":
        return None
    header = ["defense", "attack", "images", "clean SROCC", "clean PLCC", "attacked SROCC",
              "RMSE before/after", "RMSE ÷ clean score std", "mean abs Δ", "attack gradient"]
    rows = [
        [r["defense"], r["attack"], str(r["n_images"]), fmt(r["clean_srocc"]), fmt(r["clean_plcc"]),
         fmt(r["adv_srocc"]), fmt(r["rmse_clean_vs_adv"]), fmt(r.get("rel_rmse")), fmt(r["mean_abs_delta"]),
         str((section.get("defenses", {}).get(r["defense"]) or {}).get("gradient", ""))]
        for r in section.get("rows", [])
    ]
    lines = [markdown_table(header, rows)]
    for name, entry in (section.get("defenses") or {}).items():
        cert = entry.get("certificate")
        if cert:
            lines.append(
                f"\n{name}: n = {cert['n']}, σ = {cert['sigma']}, certified ℓ2 radius {cert['radius']} "
                f"([0, 1] units) at 1 − α = {1 - cert['alpha']:.3f}: mean bounds "
                f"[{fmt(cert['mean_lower'], 2)}, {fmt(cert['mean_upper'], 2)}], mean certified relative "
                f"delta {fmt(cert['mean_cert_rd'], 4)}, {cert['abstained']} image(s) with a range fallback."
            )
    return "\n".join(lines)


def gate_table(gate: Mapping[str, Any]) -> str:
    rows = [
        [r["section"], r["metric"], fmt(r["value"]), r["op"], fmt(r["threshold"]),
         "pass" if r["passed"] else "**FAIL**"]
        for r in gate.get("rows", [])
    ]
    return markdown_table(["Section", "metric", "value", "must be", "threshold", "result"], rows)
