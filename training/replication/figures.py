"""The figures of docs/RESULTS.md: baseline vs NT overlaid, and the ablation curves.

``write_figures(pair, ablations, h_lam, fig_dir)`` writes Fig. 4 (‖∇ₓf‖₁ distributions), Fig. 6 (I-FGSM
intensity) and Fig. S8-S11 (|Δscore| per image) of the baseline / NT pair, then Fig. 7: clean SROCC
and FGSM RMSE against λ, h and the λ of the exact form; returns the file names written.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from training.gate.plots import plot_ablation, write_plots
from training.replication.targets import ablation_series

__all__ = ["write_figures"]


def write_figures(
    pair: dict[str, dict[str, Any]],
    ablations: dict[str, dict[float, dict[str, Any]]],
    h_lam: float,
    fig_dir: Path,
) -> list[str]:
    """Every figure the reports support, into ``fig_dir`` (created); the file names written."""
    fig_dir.mkdir(parents=True, exist_ok=True)
    plots = write_plots(pair, fig_dir)
    for key, label, log_x in (
        ("lam", "λ (h = 0.01)", False),
        ("h", f"h (λ = {h_lam:g})", True),
        ("exact", "λ of Eq. 5 (exact ‖∇ₓf‖₁²)", True),
    ):
        reports = ablations.get(key, {})
        if reports and plot_ablation(
            sorted(reports), *ablation_series(reports), label, fig_dir / f"ablation_{key}.png", log_x=log_x
        ):
            plots.append(f"ablation_{key}.png")
    return plots
