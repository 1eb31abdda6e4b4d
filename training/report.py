"""Reports of the evaluation engine: report.json, report.md (tables laid out like the NT paper's
Tables 1-3 and S8-S10) and PNG plots (matplotlib, Agg backend).

Every table function takes ``reports: dict[label, report]``: one report gives plain values, two give
"baseline / NT" cells as in the paper. The same functions build the per-model report.md and the
replication's docs/RESULTS.md.

Plots: |Δscore| against MOS with its distribution per attack (Fig. 1, S8-S11), the ‖∇ₓf‖₁
histogram (Fig. 4; overlaid for several models), the FGSM intensity curves (Fig. 6) and the λ / h
ablation curves (Fig. 7).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from training.utils import file_sha256

__all__ = [
    "attack_names",
    "attack_table",
    "clean_table",
    "comparison_tables",
    "details_table",
    "fd_check_table",
    "fmt",
    "gate_table",
    "grad_norm_table",
    "load_report",
    "plot_ablation",
    "plot_deltas",
    "plot_grad_norms",
    "plot_intensity",
    "r_table",
    "render_markdown",
    "sanitize",
    "sweep_table",
    "write_comparison",
    "write_plots",
    "write_report",
]

Reports = Mapping[str, Mapping[str, Any]]

# (title, metric key, arrow) of the per-attack tables; every one has the paper's two column groups.
ATTACK_TABLES = (
    ("Table 2. RMSE↓ under attack", "rmse"),
    ("Table 3. SROCC↑ under attack", "srocc"),
    ("Table S8. KROCC↑ under attack", "krocc"),
    ("Table S9. PLCC↑ under attack", "plcc"),
)
COLORS = ("tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple")


# -------------------------------------------------------------------------------------------- I/O


def sanitize(obj: Any) -> Any:
    """JSON-safe copy: NaN / ±inf -> None, numpy scalars and arrays -> Python, tuples -> lists."""
    if isinstance(obj, Mapping):
        return {str(k): sanitize(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [sanitize(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return sanitize(obj.tolist())
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if obj is None or isinstance(obj, (str, int, float, bool)):
        return obj
    return str(obj)


def load_report(path: str | Path) -> dict[str, Any]:
    """A report.json (or the folder holding one)."""
    path = Path(path)
    if path.is_dir():
        path = path / "report.json"
    if not path.is_file():
        raise FileNotFoundError(f"report not found: {path}")
    with open(path) as f:
        return json.load(f)


def write_report(report: Mapping[str, Any], out_dir: str | Path, title: str = "Attack evaluation") -> str:
    """Write report.json, the PNG plots and report.md into ``out_dir``; returns sha256(report.json)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    clean = sanitize(report)
    with open(out / "report.json", "w") as f:
        json.dump(clean, f, indent=1, allow_nan=False)  # insertion order = config order
        f.write("\n")
    plots = write_plots({"model": clean}, out)
    (out / "report.md").write_text(render_markdown(clean, plots, title), encoding="utf-8")
    return file_sha256([out / "report.json"])


# ------------------------------------------------------------------------------------- formatting


def fmt(value: Any, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    if isinstance(value, (int, float)):
        return f"{value:.{digits}f}"
    return str(value)


def _get(obj: Any, path: str) -> Any:
    for part in path.split("."):
        if not isinstance(obj, Mapping) or part not in obj:
            return None
        obj = obj[part]
    return obj


def _cell(reports: Reports, path: str, digits: int = 3) -> str:
    return " / ".join(fmt(_get(r, path), digits) for r in reports.values())


def _header(reports: Reports) -> str:
    return " / ".join(reports) if len(reports) > 1 else "value"


def _table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
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
            cells.append(fmt(_get(entry, path), digits))
    return " / ".join(cells)


# ----------------------------------------------------------------------------------------- tables


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
    return _table(["Metric", _header(reports)], rows)


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
    return _table(["Attack", "images", f"MOS & after attack ({head})", f"before & after ({head})"], rows)


def r_table(reports: Reports) -> str:
    """Table S10: R robustness (Eq. S12), the mean |Δscore|, and the before/after RMSE relative to the
    clean score spread (blind to a model that merely compresses its output range)."""
    rows = [
        [name, _attack_cell(reports, name, "metrics.r"),
         _attack_cell(reports, name, "metrics.mean_abs_delta"),
         _attack_cell(reports, name, "metrics.rel_rmse")]
        for name in attack_names(reports)
    ]
    head = _header(reports)
    return _table(
        ["Attack", f"R↑ ({head})", f"mean abs Δscore↓ ({head})", f"RMSE before/after ÷ score std↓ ({head})"],
        rows,
    )


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
    return _table(header, rows)


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
    return _table(["", _header(reports)], rows)


def fd_check_table(reports: Reports) -> str | None:
    """How well the finite difference of Eq. 6 tracks the exact ‖∇ₓf‖₁ at each checked step h (the
    ``grad_norm.check_h`` setting); None when no report checked any."""
    steps = sorted({row["h"] for r in reports.values() for row in _get(r, "grad_norm.fd_check") or []})
    if not steps:
        return None

    def cell(h: float, key: str, digits: int) -> str:
        values = []
        for r in reports.values():
            rows = [row for row in _get(r, "grad_norm.fd_check") or [] if row["h"] == h]
            values.append(fmt(rows[0].get(key) if rows else None, digits))
        return " / ".join(values)

    rows = [
        [f"{h:g}", cell(h, "median_fd", 2), cell(h, "median_fd_over_exact", 3), cell(h, "pearson", 3),
         cell(h, "spearman", 3)]
        for h in steps
    ]
    header = ["h", "median FD", "median FD ÷ median exact", "Pearson(exact, FD)", "Spearman(exact, FD)"]
    return _table(header, rows)


def sweep_table(report: Mapping[str, Any]) -> str:
    """Fig. 6 data: I-FGSM for every (ε, iterations): intensity (SSIM) vs before/after RMSE, SROCC."""
    rows = [
        [fmt(255 * r["eps"], 1), str(r["iters"]), fmt(r["mean_ssim"], 4), fmt(r["rmse"]), fmt(r["srocc"]),
         fmt(r["mean_abs_delta"])]
        for r in report.get("sweep", {}).get("rows", [])
    ]
    return _table(["ε ×255", "iterations", "mean SSIM", "RMSE before/after", "SROCC before/after",
                   "mean abs Δ"], rows)


def gate_table(gate: Mapping[str, Any]) -> str:
    rows = [
        [r["section"], r["metric"], fmt(r["value"]), r["op"], fmt(r["threshold"]),
         "pass" if r["passed"] else "**FAIL**"]
        for r in gate.get("rows", [])
    ]
    return _table(["Section", "metric", "value", "must be", "threshold", "result"], rows)


# ------------------------------------------------------------------------------------------ plots


def _per_image(report: Mapping[str, Any], name: str) -> tuple[np.ndarray, np.ndarray] | None:
    entry = report.get("attacks", {}).get(name)
    if not entry or entry.get("status") != "ok" or "per_image" not in entry:
        return None
    p = entry["per_image"]
    mos = np.asarray(p["mos"], dtype=float)
    delta = np.abs(np.asarray(p["adv"], dtype=float) - np.asarray(p["clean"], dtype=float))
    return mos, delta


def plot_deltas(reports: Reports, name: str, path: str | Path) -> bool:
    """Fig. 1 / S8-S11: |Δscore| of every image against its MOS, its distribution on the right."""
    series = {label: d for label, r in reports.items() if (d := _per_image(r, name)) is not None}
    if not series:
        return False
    fig, (ax, hist) = plt.subplots(1, 2, figsize=(8, 3.4), sharey=True, gridspec_kw={"width_ratios": [3, 1]})
    top = max(float(d.max()) for _, d in series.values()) or 1.0
    bins = np.linspace(0.0, top * 1.02, 30)
    for (label, (mos, delta)), color in zip(series.items(), COLORS, strict=False):
        ax.scatter(mos, delta, s=10, alpha=0.6, color=color, label=label)
        hist.hist(delta, bins=bins, orientation="horizontal", alpha=0.5, color=color)
    ax.set_xlabel("MOS")
    ax.set_ylabel("|score after − score before|")
    ax.set_title(f"{name}: absolute score change per image")
    hist.set_xlabel("images")
    if len(series) > 1:
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def plot_grad_norms(series: Mapping[str, Sequence[float]], path: str | Path, title: str) -> bool:
    """Fig. 4: histograms of ‖∇ₓf‖₁ (log-spaced bins), one per series, overlaid."""
    arrays = {k: np.asarray([v for v in vals if v is not None and v > 0], dtype=float)
              for k, vals in series.items()}
    arrays = {k: v for k, v in arrays.items() if v.size}
    if not arrays:
        return False
    lo = min(float(v.min()) for v in arrays.values())
    hi = max(float(v.max()) for v in arrays.values())
    bins = np.geomspace(lo * 0.9, hi * 1.1 if hi > lo else lo * 1.2, 30)
    fig, ax = plt.subplots(figsize=(6, 3.4))
    for (label, values), color in zip(arrays.items(), COLORS, strict=False):
        ax.hist(values, bins=bins, alpha=0.5, color=color, label=f"{label} (median {np.median(values):.3g})")
    ax.set_xscale("log")
    ax.set_xlabel("‖∇ₓ f(x)‖₁")
    ax.set_ylabel("images")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def plot_intensity(reports: Reports, path: str | Path) -> bool:
    """Fig. 6: before/after RMSE and SROCC of I-FGSM against attack intensity (mean SSIM)."""
    rows = {label: r.get("sweep", {}).get("rows", []) for label, r in reports.items()}
    if not any(rows.values()):
        return False
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4))
    for (label, sweep), color in zip(rows.items(), COLORS, strict=False):
        styles = ("-o", "--s", ":^", "-.v")
        for style, iters in zip(styles, sorted({r["iters"] for r in sweep}), strict=False):
            pts = sorted((r for r in sweep if r["iters"] == iters), key=lambda r: -r["mean_ssim"])
            ssim = [r["mean_ssim"] for r in pts]
            for ax, key in zip(axes, ("rmse", "srocc"), strict=True):
                values = [np.nan if r[key] is None else r[key] for r in pts]
                ax.plot(ssim, values, style, color=color, label=f"{label} K={iters}", markersize=4)
    for ax, name in zip(axes, ("RMSE before/after ↓", "SROCC before/after ↑"), strict=True):
        ax.set_xlabel("mean SSIM of the adversarial images (lower = stronger)")
        ax.set_ylabel(name)
        ax.invert_xaxis()
    axes[0].legend(fontsize=7)
    fig.suptitle("I-FGSM intensity sweep (ε × iterations)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def plot_ablation(x: Sequence[float], srocc: Sequence[float | None], rmse: Sequence[float | None],
                  xlabel: str, path: str | Path, log_x: bool = False) -> bool:
    """Fig. 7: clean SROCC and FGSM before/after RMSE against an NT hyperparameter."""
    if not x:
        return False
    fig, ax = plt.subplots(figsize=(6, 3.4))
    ax.plot(x, [np.nan if v is None else v for v in srocc], "-o", color=COLORS[0])
    ax.set_xlabel(xlabel)
    ax.set_ylabel("clean SROCC ↑", color=COLORS[0])
    right = ax.twinx()
    right.plot(x, [np.nan if v is None else v for v in rmse], "-s", color=COLORS[1])
    right.set_ylabel("FGSM RMSE before/after ↓", color=COLORS[1])
    if log_x:
        ax.set_xscale("log")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def write_plots(reports: Reports, out: Path, prefix: str = "") -> list[str]:
    """All plots for ``reports`` into ``out``; returns the file names written."""
    written = []
    for name in attack_names(reports):
        file = f"{prefix}delta_{name}.png"
        if plot_deltas(reports, name, out / file):
            written.append(file)
    if len(reports) == 1:
        gn = next(iter(reports.values())).get("grad_norm", {})
        series = {"exact (autograd)": gn.get("exact") or [], f"FD, h={gn.get('h')}": gn.get("fd") or []}
    else:
        series = {label: r.get("grad_norm", {}).get("exact") or [] for label, r in reports.items()}
    if plot_grad_norms(series, out / f"{prefix}grad_norm.png", "‖∇ₓf‖₁ on the evaluated images"):
        written.append(f"{prefix}grad_norm.png")
    if plot_intensity(reports, out / f"{prefix}intensity.png"):
        written.append(f"{prefix}intensity.png")
    return written


# -------------------------------------------------------------------------------------- markdown


def render_markdown(
    report: Mapping[str, Any], plots: Sequence[str] = (), title: str = "Attack evaluation"
) -> str:
    """report.md: meta, gate verdict, Tables 1-3 and S8-S10, attack details, norms, sweep, plots."""
    meta = report.get("meta", {})
    single = {"model": report}
    gate = report.get("gate")
    parts = [f"# {title}", ""]
    info = [
        ("checkpoint", meta.get("checkpoint")), ("model", meta.get("model_name")),
        ("weights sha256", meta.get("weights_sha256")), ("manifest", meta.get("manifest")),
        ("split", meta.get("split")), ("images", meta.get("n_images")),
        ("crops: served / attacked", f"{meta.get('served_crops')} / {meta.get('attack_crops')}"),
        ("surrogate", meta.get("surrogate_checkpoint")), ("device", meta.get("device")),
        ("gate config sha256", meta.get("config_sha256")),
        ("total seconds", fmt(report.get("seconds", {}).get("total"), 1)),
    ]
    parts += [_table(["", ""], [[k, f"`{v}`" if v is not None else "n/a"] for k, v in info]), ""]
    if isinstance(gate, Mapping):
        verdict = "PASSED" if gate.get("passed") else "FAILED"
        parts += [f"## Acceptance gate: {verdict}", "", gate_table(gate), ""]
    parts += ["## Table 1. Clean performance (served score vs MOS)", "", clean_table(single), ""]
    attack_clean = report.get("clean", {}).get("attack_scorer")
    if attack_clean:
        parts += [
            f"The attacks see {attack_clean['num_crops']} crop(s) per image; with that scorer the clean "
            f"SROCC is {fmt(attack_clean['srocc'])}, PLCC {fmt(attack_clean['plcc'])}, RMSE "
            f"{fmt(attack_clean['rmse'])}. Before/after columns compare that scorer with itself.", "",
        ]
    for table_title, metric in ATTACK_TABLES:
        parts += [f"## {table_title}", "", attack_table(single, metric), ""]
    parts += ["## Table S10. R robustness↑ (Eq. S12, β1 = 100, β2 = 0)", "", r_table(single), ""]
    parts += ["## Attacks: parameters and visibility", "", details_table(report), ""]
    if report.get("grad_norm", {}).get("status") == "ok":
        parts += ["## Gradient norms (Fig. 4)", "", grad_norm_table(single), ""]
        parts += _fd_check_section(single, "###")
    if report.get("sweep", {}).get("rows"):
        parts += ["## FGSM intensity sweep (Fig. 6)", "", sweep_table(report), ""]
    if plots:
        parts += ["## Plots", ""] + [f"![{p}]({p})" for p in plots] + [""]
    return "\n".join(parts)


def comparison_tables(reports: Reports) -> str:
    """Tables 1-3, S8-S10 and the gradient norms with "A / B" cells, one column group per metric."""
    labels = " / ".join(reports)
    parts = [f"Cells are {labels}.", "", "### Table 1. Clean performance (served score vs MOS)", "",
             clean_table(reports), ""]
    for table_title, metric in ATTACK_TABLES:
        parts += [f"### {table_title}", "", attack_table(reports, metric), ""]
    parts += ["### Table S10. R robustness↑", "", r_table(reports), ""]
    parts += ["### Gradient norms", "", grad_norm_table(reports), ""]
    parts += _fd_check_section(reports, "####")
    return "\n".join(parts)


FD_CHECK_NOTE = (
    "The finite difference (Eq. 6) is a first-order estimate of ‖∇ₓf‖₁: it reaches the exact norm as "
    "h → 0 only while f is linear along the step. A ratio well below 1 at the training step h means "
    "the model bends within that step, so the regulariser penalises the secant slope, not the gradient."
)


def _fd_check_section(reports: Reports, level: str) -> list[str]:
    table = fd_check_table(reports)
    if table is None:
        return []
    return [f"{level} Finite difference vs exact norm, by step h", "", FD_CHECK_NOTE, "", table, ""]


def write_comparison(reports: Reports, out_dir: str | Path, title: str = "Comparison") -> Path:
    """comparison.md and overlaid plots (Fig. 4, 6, S8-S11) of several reports in ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    plots = write_plots(reports, out, prefix="compare_")
    text = [f"# {title}", "", comparison_tables(reports), "## Plots", ""]
    text += [f"![{p}]({p})" for p in plots]
    path = out / "comparison.md"
    path.write_text("\n".join(text) + "\n", encoding="utf-8")
    return path
