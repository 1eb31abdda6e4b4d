"""PNG plots of evaluation reports (matplotlib, Agg backend).

|Δscore| against MOS with its distribution per attack (Fig. 1, S8-S11), the ‖∇ₓf‖₁ histogram (Fig. 4;
overlaid for several models), the FGSM intensity curves (Fig. 6) and the λ / h ablation curves
(Fig. 7). ``write_plots`` writes every plot a set of reports supports.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from training.gate.tables import Reports, attack_names

__all__ = ["COLORS", "plot_ablation", "plot_deltas", "plot_grad_norms", "plot_intensity", "write_plots"]

COLORS = ("tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple")


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
